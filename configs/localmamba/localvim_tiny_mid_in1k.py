# LocalVim-T with a class token in the middle of the sequence (no RoPE), ImageNet-1k 224x224,
# 300 epochs, 8 GPUs x 128. The classifier reads the class token (no pooling).
_base_ = ['../_base_/in1k_localmamba_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.LocalVim', arch='tiny_mid', out_type='cls_token',
                  drop_path_rate=0.1),
    neck=None,
    head=dict(in_channels=192))
