# GroupMamba Tiny UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images).
# Paper (GroupMamba-T): mIoU 48.6 single-scale, 49.2 multi-scale.
# The official repository has no segmentation code: the schedule, batch and drop path 0.2 are
# VMamba's segmentation settings (what the paper compares with), inferred.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch groupmamba-t groupmamba_tiny_ema.pth checkpoints/groupmamba_tiny_in1k.pth
_base_ = ['../_base_/ade20k_upernet_160k.py']

model = dict(
    backbone=dict(
        type='vssm_mm.GroupMamba',
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/groupmamba_tiny_in1k.pth',
                      prefix='backbone.')),
    decode_head=dict(in_channels=[64, 128, 348, 448]),
    auxiliary_head=dict(in_channels=348))
