# MSVMamba-Nano Mask R-CNN trained from scratch on the generated shapes dataset
# (tools/make_demo_data.py) at 128x96: a few minutes on a 2-core CPU. `make demo` runs it.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/datasets/demo_coco_instance.py',
]
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

width = 64  # FPN and head width, reduced for a CPU
model = dict(
    backbone=dict(_delete_=True, type='vssm_mm.MSVMamba', arch='nano', out_indices=(0, 1, 2, 3),
                  drop_path_rate=0.0),
    neck=dict(in_channels=[48, 96, 192, 384], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width,
                  anchor_generator=dict(scales=[4])),  # objects are 20-60 px here
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=3)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=300),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300), rcnn=dict(max_per_img=20)))

max_iters = 400
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
custom_hooks = [dict(type='vssm_mm.ValidateBeforeTrainHook'), dict(type='vssm_mm.ProgressBarHook')]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
