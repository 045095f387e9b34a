# MSVMamba-Nano UperNet trained from scratch on the generated shapes in the ADE20K layout
# (background + 3 classes, 64x64 crops): a few minutes on a 2-core CPU. `make demo-seg` runs it.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/datasets/demo_ade.py',
]
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    pretrained=None,
    backbone=dict(_delete_=True, type='vssm_mm.MSVMamba', arch='nano', out_indices=(0, 1, 2, 3),
                  drop_path_rate=0.0),
    decode_head=dict(in_channels=[48, 96, 192, 384], channels=64, num_classes=4,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=32, num_classes=4, norm_cfg=norm_cfg))

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01),
                     clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
custom_hooks = [dict(type='vssm_mm.ValidateBeforeTrainHook'), dict(type='vssm_mm.ProgressBarHook')]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
