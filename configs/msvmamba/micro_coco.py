# MSVMamba Micro Mask R-CNN 1x on COCO (8 GPUs x 4 images, as the official runs).
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch msvmamba-m OFFICIAL.pth checkpoints/msvmamba_micro_in1k.pth
_base_ = ['../_base_/coco_mask_rcnn_1x.py']

model = dict(
    backbone=dict(
        type='vssm_mm.MSVMamba',
        arch='micro',
        # 0.2 is what the official runs had (inherited from the Swin config they extend).
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/msvmamba_micro_in1k.pth',
                      prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512]))
train_dataloader = dict(batch_size=4)
