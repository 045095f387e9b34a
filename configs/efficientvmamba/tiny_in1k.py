# EfficientVMamba-T, ImageNet-1k 224x224, 300 epochs, 16 GPUs x 128 (train with --amp); top-1 76.5.
_base_ = ['../_base_/efficientvmamba_in1k_recipe.py']

model = dict(backbone=dict(arch='tiny'), head=dict(in_channels=384))
