# GroupMamba Base UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images).
# Not reported by the paper (only GroupMamba-T was evaluated on ADE20K).
# The official repository has no segmentation code: the schedule, batch and drop path 0.2 are
# VMamba's segmentation settings (what the paper compares with), inferred.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch groupmamba-b groupmamba_base_ema.pth checkpoints/groupmamba_base_in1k.pth
_base_ = ['../_base_/ade20k_upernet_160k.py']

model = dict(
    backbone=dict(
        type='vssm_mm.GroupMamba',
        arch='base',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/groupmamba_base_in1k.pth',
                      prefix='backbone.')),
    decode_head=dict(in_channels=[96, 192, 424, 512]),
    auxiliary_head=dict(in_channels=424))
