# EfficientVMamba-B UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images); the paper
# reports 46.5 mIoU single-scale. No official segmentation config exists; this follows the
# paper ("aligned with VMamba": mmseg's Swin-T UperNet recipe). Inferred choices are marked.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch efficientvmamba-b efficient_vmamba_base.ckpt checkpoints/efficientvmamba_base_in1k.pth
_base_ = ['../_base_/ade20k_upernet_160k.py']

model = dict(
    backbone=dict(
        type='vssm_mm.EfficientVMamba',
        arch='base',
        # Inferred: 0.3, what VMamba's segmentation configs inherit from Swin-T's.
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/efficientvmamba_base_in1k.pth',
                      prefix='backbone.')),
    # The standard UperNet width; with it the model has the paper's 65M parameters.
    decode_head=dict(in_channels=[96, 192, 384, 768], channels=512),
    auxiliary_head=dict(in_channels=384))
