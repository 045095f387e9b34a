# EfficientVMamba ImageNet-1k recipe as the released runs' training logs record it (the yaml files
# of the official repository were not what produced the checkpoints): 300 epochs on 16 GPUs x 128
# images (T, S; B used 16 x 64), AdamW lr 2e-3 for every batch size, weight decay 0.04 except on
# 1-D tensors and biases, 20 warm-up epochs from 1e-7 stepped once per epoch, then a cosine decay
# per iteration down to 1e-6; Mixup 0.2 / CutMix 1.0 (one of the two per batch), label smoothing
# 0.1, RandAugment rand-m9-mstd0.5, random erasing 0.25, drop path 0.1, gradient clipping 1.0,
# EMA 0.9999 (the released weights are the EMA ones). Train with --amp (the runs used fp16).
_base_ = ['./in1k_vssm_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.EfficientVMamba', drop_path_rate=0.1),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.2), dict(type='CutMix', alpha=1.0)]))

bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
# timm's rand-m9-mstd0.5 transform set (not the "-inc1" increasing one the Swin configs use):
# enhancements map the level to a factor 0.1..1.9 with no random sign, posterize keeps
# int(level * 0.4) bits and solarize's threshold grows with the level.
timm_rand_transforms = [
    dict(type='AutoContrast'),
    dict(type='Equalize'),
    dict(type='Invert'),
    dict(type='Rotate', magnitude_range=(0, 30)),
    dict(type='Posterize', magnitude_range=(-0.9999, 3.0001)),  # ceil() of it == timm's int()
    dict(type='Solarize', magnitude_range=(0, 256)),
    dict(type='SolarizeAdd', magnitude_range=(0, 110)),
    dict(type='ColorTransform', magnitude_range=(-0.9, 0.9), random_negative_prob=0.0),
    dict(type='Contrast', magnitude_range=(-0.9, 0.9), random_negative_prob=0.0),
    dict(type='Brightness', magnitude_range=(-0.9, 0.9), random_negative_prob=0.0),
    dict(type='Sharpness', magnitude_range=(-0.9, 0.9), random_negative_prob=0.0),
    dict(type='Shear', magnitude_range=(0, 0.3), direction='horizontal'),
    dict(type='Shear', magnitude_range=(0, 0.3), direction='vertical'),
    dict(type='Translate', magnitude_range=(0, 0.45), direction='horizontal'),
    dict(type='Translate', magnitude_range=(0, 0.45), direction='vertical'),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies=timm_rand_transforms, num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))

optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.04), clip_grad=dict(max_norm=1.0))
param_scheduler = [
    # lr = 1e-7 + (2e-3 - 1e-7) * epoch / 20, constant within an epoch.
    dict(type='LinearLR', start_factor=1e-7 / 2e-3, by_epoch=True, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
# The released runs did not scale the LR with the batch (B ran 2e-3 at 1024 images too).
auto_scale_lr = dict(base_batch_size=2048)
