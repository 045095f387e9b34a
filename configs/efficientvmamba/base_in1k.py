# EfficientVMamba-B, ImageNet-1k 224x224, 300 epochs, 16 GPUs x 64 (train with --amp); top-1 81.8.
_base_ = ['../_base_/efficientvmamba_in1k_recipe.py']

model = dict(backbone=dict(arch='base'), head=dict(in_channels=768))

# B ran 64 images per GPU (global 1024) at the same lr 2e-3 as T and S.
train_dataloader = dict(batch_size=64)
auto_scale_lr = dict(base_batch_size=1024)
