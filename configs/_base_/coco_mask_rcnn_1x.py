# Mask R-CNN 1x on COCO with the settings of the VMamba-family detection runs (inherited from
# mmdet's Swin-T config): AdamW lr 1e-4, wd 0.05, no weight decay on parameters named *norm*,
# 1000 warm-up iterations, 12 epochs with steps at 8 and 11. Family configs set the backbone
# (type, arch, init_cfg) and the FPN input widths.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, out_indices=(0, 1, 2, 3), drop_path_rate=0.2))
