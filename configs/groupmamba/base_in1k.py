# GroupMamba Base (57,150,838 parameters with both heads), ImageNet-1k 224x224, 300 epochs,
# 8 GPUs x 128, hard distillation from RegNetY-16GF (train with --amp).
_base_ = ['../_base_/groupmamba_in1k_recipe.py']

model = dict(backbone=dict(arch='base'), head=dict(in_channels=512))
