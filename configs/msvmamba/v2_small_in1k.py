# MSVMamba v2 Small, ImageNet-1k 224x224, 300 epochs, 8 GPUs x 128 (train with --amp).
_base_ = ['../_base_/in1k_vssm_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.MSVMamba', arch='v2_small', drop_path_rate=0.4),
    head=dict(in_channels=768))
