# EfficientVMamba-S Mask R-CNN 1x on COCO (8 GPUs x 2 images, the paper's batch 16; train with
# --amp as the official runs did); the paper reports box/mask AP 39.3/36.7.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch efficientvmamba-s efficient_vmamba_small.ckpt checkpoints/efficientvmamba_small_in1k.pth
_base_ = ['../_base_/coco_mask_rcnn_1x.py']

model = dict(
    backbone=dict(
        type='vssm_mm.EfficientVMamba',
        arch='small',
        # 0.2 is what the official runs had (inherited from the Swin config they extend).
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/efficientvmamba_small_in1k.pth',
                      prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512]))
