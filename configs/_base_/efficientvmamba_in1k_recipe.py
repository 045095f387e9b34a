# EfficientVMamba ImageNet-1k recipe as the released runs' training logs record it (the yaml files
# of the official repository were not what produced the checkpoints): 300 epochs on 16 GPUs x 128
# images (T, S; B used 16 x 64), AdamW lr 2e-3 for every batch size, weight decay 0.04 except on
# 1-D tensors and biases, 20 warm-up epochs from 1e-7 stepped once per epoch, then a cosine decay
# per iteration down to 1e-6; Mixup 0.2 / CutMix 1.0 (one of the two per batch), label smoothing
# 0.1, RandAugment rand-m9-mstd0.5, random erasing 0.25, drop path 0.1, gradient clipping 1.0,
# EMA 0.9999 (the released weights are the EMA ones). Train with --amp (the runs used fp16).
_base_ = ['./in1k_vssm_recipe_original_randaugment.py']

model = dict(
    backbone=dict(type='vssm_mm.EfficientVMamba', drop_path_rate=0.1),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.2), dict(type='CutMix', alpha=1.0)]))

train_dataloader = dict(batch_size=128)

optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.04), clip_grad=dict(max_norm=1.0))
param_scheduler = [
    # lr = 1e-7 + (2e-3 - 1e-7) * epoch / 20, constant within an epoch.
    dict(type='LinearLR', start_factor=1e-7 / 2e-3, by_epoch=True, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
# The released runs did not scale the LR with the batch (B ran 2e-3 at 1024 images too).
auto_scale_lr = dict(base_batch_size=2048)
