# MSVMamba Nano UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images).
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch msvmamba-n OFFICIAL.pth checkpoints/msvmamba_nano_in1k.pth
_base_ = ['../_base_/ade20k_upernet_160k.py']

model = dict(
    backbone=dict(
        type='vssm_mm.MSVMamba',
        arch='nano',
        # What the official runs had: 0.3 (inherited from the Swin config they extend).
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/msvmamba_nano_in1k.pth',
                      prefix='backbone.')),
    decode_head=dict(in_channels=[48, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192))
