# GroupMamba ImageNet-1k recipe (official classification/train.py, its config.py defaults and the
# README command): the VMamba-family recipe of in1k_vssm_recipe.py (300 epochs, 8 GPUs x 128,
# AdamW lr 1e-3 = 5e-4 per 512 images, weight decay 0.05 except 1-D tensors and biases, 20 linear
# warm-up epochs from 1e-6, cosine to 1e-5, RandAugment rand-m9-mstd0.5-inc1, Mixup 0.8 / CutMix
# 1.0, label smoothing 0.1, random erasing 0.25, gradient clipping 5, EMA 0.9999), with
# * DeiT hard distillation: a second linear head (dist_head) learns the arg-max of a RegNetY-16GF
#   teacher (DeiT's weights) computed on the same mixed images; loss = 0.5 * CE(head, mixed
#   smoothed labels) + 0.5 * CE(dist_head, teacher arg-max); evaluation averages both heads;
# * drop path 0.05 for every variant (hard-coded in the official scripts);
# * the cosine decay stepped every iteration and the EMA over the BN statistics too, as timm does.
# The teacher needs timm (pip install timm) for mmpretrain's TimmClassifier; any mmpretrain
# classifier config (a dict or a config file path) with a checkpoint works as the teacher.
# Train without distillation with --cfg-options model.teacher=None (both heads then learn the
# labels). Train with --amp (the official runs used mixed precision; the teacher runs in fp32).
_base_ = ['./in1k_vssm_recipe.py']

model = dict(
    type='vssm_mm.DistillImageClassifier',
    backbone=dict(type='vssm_mm.GroupMamba', out_type='cls_token', drop_path_rate=0.05),
    neck=None,
    head=dict(
        _delete_=True,
        type='vssm_mm.DistillLinearClsHead',
        num_classes=1000,
        in_channels=448,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        distillation_type='hard',
        alpha=0.5),
    teacher=dict(type='TimmClassifier', model_name='regnety_160'),
    # DeiT's RegNetY-16GF teacher (regnety_160-a5fe301d.pth, published with DeiT): download it
    # yourself to this path; nothing is fetched at run time.
    teacher_checkpoint='checkpoints/regnety_160-a5fe301d.pth')

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]

custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, update_buffers=True, priority='ABOVE_NORMAL')
]
