# EfficientVMamba-S, ImageNet-1k 224x224, 300 epochs, 16 GPUs x 128 (train with --amp); top-1 78.7.
_base_ = ['../_base_/efficientvmamba_in1k_recipe.py']

model = dict(backbone=dict(arch='small'), head=dict(in_channels=512))
