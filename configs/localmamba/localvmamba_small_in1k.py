# LocalVMamba-S (searched directions), ImageNet-1k 224x224, 300 epochs, 8 GPUs x 128.
# Train with --amp (the official LocalVMamba runs used mixed precision).
_base_ = ['../_base_/in1k_localmamba_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.LocalVMamba', arch='small', drop_path_rate=0.2),
    head=dict(in_channels=768))
