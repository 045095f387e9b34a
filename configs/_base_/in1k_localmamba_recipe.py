# ImageNet-1k recipe of the LocalMamba trainer (classification/configs/strategies/local_mamba/
# config.yaml): 300 epochs, batch 1024 (8 GPUs x 128), AdamW lr 1e-3 (absolute), weight decay
# 0.04 with none on 1-D tensors, biases, pos_embed and cls_token, 20 warm-up epochs from 1e-7
# (stepped once per epoch), then per-iteration cosine to 1e-6; RandAugment m9-mstd0.5, Mixup 0.2 /
# CutMix 1.0, label smoothing 0.1, random erasing 0.25; EMA 0.9999 (the paper's setting); no
# gradient clipping (the trainer's default). Family configs set the backbone and head width.
_base_ = ['./in1k_vssm_recipe.py']

# timm's RandAugment 'rand-m9-mstd0.5' without '-inc1': the original magnitude mapping, not the
# increasing one the other families (and mmpretrain's 'timm_increasing' preset) use. It differs
# in four places: posterize keeps level * 0.4 bits (timm floors; mmpretrain rounds up, hence
# the range shifted by one), solarize thresholds at level * 25.6, and color, contrast,
# brightness and sharpness scale by 0.1 + level * 0.18 (1.72 at m9) without random negation.
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
rand_augment_policies = [
    dict(type='AutoContrast'),
    dict(type='Equalize'),
    dict(type='Invert'),
    dict(type='Rotate', magnitude_range=(0, 30)),
    dict(type='Posterize', magnitude_range=(-1, 3)),
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
    dict(type='RandAugment', policies=rand_augment_policies, num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

model = dict(
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.2), dict(type='CutMix', alpha=1.0)]))

optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.04),
    paramwise_cfg=dict(custom_keys={'.pos_embed': dict(decay_mult=0.0),
                                    '.cls_token': dict(decay_mult=0.0)}),
    clip_grad=None)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
