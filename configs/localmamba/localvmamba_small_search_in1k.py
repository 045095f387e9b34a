# Direction search for LocalVMamba-S: a stem-width-32 supernet with the small depths that scans all
# eight directions in every block, mixed with learnable softmax weights, trained for 100 epochs
# with the classification recipe (weights trained jointly, with weight decay; no EMA). Then:
#   python tools/export_local_directions.py work_dirs/localvmamba_small_search_in1k/epoch_100.pth \
#       --base configs/localmamba/localvmamba_small_in1k.py --out configs/localmamba/my_localvmamba_small_in1k.py
# Train with --amp.
_base_ = ['../_base_/in1k_localmamba_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.LocalVMamba', arch='small_search', drop_path_rate=0.1),
    head=dict(in_channels=256))
custom_hooks = []
train_cfg = dict(max_epochs=100)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20, end=100,
         convert_to_iter_based=True),
]
