# EfficientVMamba-B Mask R-CNN 1x on COCO (8 GPUs x 2 images, the paper's batch 16; train with
# --amp as the official runs did); the paper reports box/mask AP 43.7/40.2.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch efficientvmamba-b efficient_vmamba_base.ckpt checkpoints/efficientvmamba_base_in1k.pth
_base_ = ['../_base_/coco_mask_rcnn_1x.py']

model = dict(
    backbone=dict(
        type='vssm_mm.EfficientVMamba',
        arch='base',
        # 0.2 is what the official runs had (inherited from the Swin config they extend).
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/efficientvmamba_base_in1k.pth',
                      prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))
