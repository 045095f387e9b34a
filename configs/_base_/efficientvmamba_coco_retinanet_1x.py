# RetinaNet 1x on COCO for EfficientVMamba. No official config exists; the paper gives AdamW,
# 12 epochs (steps at 8 and 11), batch 16 and drop path 0.2 for its detection runs. The detector
# is mmdet's Swin-T RetinaNet (FPN on the stride 8/16/32 outputs, P6/P7 from the last backbone
# output), trained with the optimizer of the Mask R-CNN runs: AdamW lr 1e-4, wd 0.05, no weight
# decay on parameters named *norm*. Family configs set the backbone and the FPN input widths.
_base_ = ['mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

# Only the stages the FPN reads: an unused out_norms.0 would stall DDP.
model = dict(backbone=dict(_delete_=True, out_indices=(1, 2, 3), drop_path_rate=0.2))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
