# UperNet on ADE20K, 512x512 crops, 160k iterations, with the settings of the VMamba-family
# segmentation runs (mmseg's Swin-T config): AdamW lr 6e-5, wd 0.01, no weight decay on
# parameters named *norm*, 1500 warm-up iterations then poly decay, batch 2 per GPU x 8 GPUs.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, out_indices=(0, 1, 2, 3)))
