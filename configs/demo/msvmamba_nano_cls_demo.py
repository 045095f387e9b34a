# MSVMamba-Nano image classifier trained from scratch on the generated shapes (3 classes,
# 64x64): a few minutes on a 2-core CPU. `make demo-cls` runs it.
_base_ = [
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/datasets/demo_cls.py',
]
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='vssm_mm.MSVMamba', arch='nano', out_indices=(3, ), drop_path_rate=0.0),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=384,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

max_iters = 200
train_cfg = dict(by_epoch=False, max_iters=max_iters, val_interval=50)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
custom_hooks = [dict(type='vssm_mm.ValidateBeforeTrainHook'), dict(type='vssm_mm.ProgressBarHook')]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
