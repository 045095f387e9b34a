# EfficientVMamba-S UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images); the paper
# reports 41.5 mIoU single-scale. No official segmentation config exists; this follows the
# paper ("aligned with VMamba": mmseg's Swin-T UperNet recipe). Inferred choices are marked.
# Initialise from the converted ImageNet checkpoint:
#   python tools/convert_checkpoint.py --arch efficientvmamba-s efficient_vmamba_small.ckpt checkpoints/efficientvmamba_small_in1k.pth
_base_ = ['../_base_/ade20k_upernet_160k.py']

model = dict(
    backbone=dict(
        type='vssm_mm.EfficientVMamba',
        arch='small',
        # Inferred: 0.3, what VMamba's segmentation configs inherit from Swin-T's.
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/efficientvmamba_small_in1k.pth',
                      prefix='backbone.')),
    # Inferred: a 384-channel UperHead (instead of 512) is what gives the paper's model size.
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=384),
    auxiliary_head=dict(in_channels=256))
