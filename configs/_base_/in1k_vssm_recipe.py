# ImageNet-1k recipe of the VMamba-family trainers (Swin's): 300 epochs, AdamW, batch 1024
# (8 GPUs x 128), cosine LR with 20 warm-up epochs, RandAugment, Mixup/CutMix, label smoothing
# 0.1, random erasing 0.25, gradient clipping 5, EMA. Family configs set the backbone and the
# head width. Train with --amp (the official runs used mixed precision).
_base_ = [
    'mmpretrain::_base_/models/swin_transformer/tiny_224.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, out_indices=(3, )))

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=64)
test_dataloader = val_dataloader

# No weight decay on 1-D tensors (norms, biases, Ds), as the official trainers do.
optim_wrapper = dict(clip_grad=dict(max_norm=5.0))

custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
