# MSVMamba Micro UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images).
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch msvmamba-m OFFICIAL.pth checkpoints/msvmamba_micro_in1k.pth
_base_ = ['../_base_/ade20k_upernet_160k.py']

model = dict(
    backbone=dict(
        type='vssm_mm.MSVMamba',
        arch='micro',
        # What the official runs had: 0.3 (inherited from the Swin config they extend).
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/msvmamba_micro_in1k.pth',
                      prefix='backbone.')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
