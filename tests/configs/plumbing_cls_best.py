# plumbing_cls.py validated before training and keeping its best checkpoint (save_best).
_base_ = ['./plumbing_cls.py']
default_hooks = dict(checkpoint=dict(save_best='auto'))
custom_hooks = [dict(type='vssm_mm.ValidateBeforeTrainHook')]
