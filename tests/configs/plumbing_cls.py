# Stock mmpretrain ResNet-18 on the generated classification data: proves the plumbing.
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    'mmpretrain::_base_/default_runtime.py',
    '../../configs/_base_/datasets/demo_cls.py',
]
model = dict(head=dict(num_classes=3, topk=(1, )))
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
param_scheduler = dict(type='ConstantLR', factor=1.0)
train_cfg = dict(by_epoch=False, max_iters=2, val_interval=2)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=1))
