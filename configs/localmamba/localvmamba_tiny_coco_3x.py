# LocalVMamba-T Mask R-CNN 3x with multi-scale + crop augmentation on COCO (8 GPUs x 2 images,
# AMP), as the official config.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch localvmamba-t local_vssm_tiny.ckpt checkpoints/localvmamba_tiny_in1k.pth
_base_ = ['../_base_/coco_mask_rcnn_3x.py']

model = dict(
    backbone=dict(
        type='vssm_mm.LocalVMamba',
        arch='tiny',
        # 0.2: what the official runs had (inherited from the Swin config they extend).
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/localvmamba_tiny_in1k.pth',
                      prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(type='AmpOptimWrapper')
