# MSVMamba v2 Base, ImageNet-1k 224x224, 300 epochs, 8 GPUs x 128 (train with --amp).
_base_ = ['../_base_/in1k_vssm_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.MSVMamba', arch='v2_base', drop_path_rate=0.5),
    head=dict(in_channels=1024))

# v2 Base: base LR 3e-4 and minimum LR 3e-6 per 512 images (6e-4 / 6e-6 at batch 1024).
optim_wrapper = dict(optimizer=dict(lr=6e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=6e-6, by_epoch=True, begin=20),
]
