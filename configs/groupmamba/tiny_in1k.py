# GroupMamba Tiny (23,361,917 parameters with both heads), ImageNet-1k 224x224, 300 epochs,
# 8 GPUs x 128, hard distillation from RegNetY-16GF (train with --amp).
_base_ = ['../_base_/groupmamba_in1k_recipe.py']

model = dict(backbone=dict(arch='tiny'), head=dict(in_channels=448))
