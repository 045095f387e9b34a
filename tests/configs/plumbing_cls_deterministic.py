# plumbing_cls without randomness in the data (no random crop/flip, no shuffling, no
# validation), so that an interrupted-and-resumed run must equal an uninterrupted one.
_base_ = ['./plumbing_cls.py']
train_dataloader = dict(
    batch_size=2,
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(64, 64)),
        dict(type='PackInputs'),
    ]),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_dataloader = None
val_evaluator = None
val_cfg = None
train_cfg = dict(val_interval=1000)
randomness = dict(seed=0)
