# EfficientVMamba-T RetinaNet 1x on COCO (8 GPUs x 2 images, the paper's batch 16; train with
# --amp); the paper reports box AP 37.5. No official config exists: see the base file.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch efficientvmamba-t efficient_vmamba_tiny.ckpt checkpoints/efficientvmamba_tiny_in1k.pth
_base_ = ['../_base_/efficientvmamba_coco_retinanet_1x.py']

model = dict(
    backbone=dict(
        type='vssm_mm.EfficientVMamba',
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/efficientvmamba_tiny_in1k.pth',
                      prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384]))
