# LocalVMamba-T UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images, fp32), as the
# official config. Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch localvmamba-t local_vssm_tiny.ckpt checkpoints/localvmamba_tiny_in1k.pth
_base_ = ['../_base_/ade20k_upernet_160k.py']

model = dict(
    backbone=dict(
        type='vssm_mm.LocalVMamba',
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/localvmamba_tiny_in1k.pth',
                      prefix='backbone.')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
