# ImageNet-1k recipe of the LocalMamba trainer (classification/configs/strategies/local_mamba/
# config.yaml): 300 epochs, batch 1024 (8 GPUs x 128), AdamW lr 1e-3 (absolute), weight decay
# 0.04 with none on 1-D tensors, biases, pos_embed and cls_token, 20 warm-up epochs from 1e-7
# (stepped once per epoch), then per-iteration cosine to 1e-6; RandAugment m9-mstd0.5 with timm's
# original mapping (from the base), Mixup 0.2 / CutMix 1.0, label smoothing 0.1, random erasing
# 0.25; EMA 0.9999 (the paper's setting); no gradient clipping (the trainer's default). Family
# configs set the backbone and head width.
_base_ = ['./in1k_vssm_recipe_original_randaugment.py']

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
