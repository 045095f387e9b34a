# LocalVim-S (searched directions, RoPE), ImageNet-1k 224x224, 300 epochs, 8 GPUs x 128.
_base_ = ['../_base_/in1k_localmamba_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.LocalVim', arch='small', drop_path_rate=0.1),
    head=dict(in_channels=384))
