# Mask R-CNN 3x (36 epochs, steps at 27 and 33) with Swin's multi-scale + crop augmentation.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, out_indices=(0, 1, 2, 3), drop_path_rate=0.2))
