# Direction search for LocalVim (used for LocalVim-T and -S): a width-128 supernet that scans all
# eight directions in every layer and mixes them with learnable softmax weights, trained for 100
# epochs with the classification recipe (the weights are trained jointly, with weight decay,
# as in the official search; no EMA). Then:
#   python tools/export_local_directions.py work_dirs/localvim_search_in1k/epoch_100.pth \
#       --base configs/localmamba/localvim_tiny_in1k.py --out configs/localmamba/my_localvim_tiny_in1k.py
_base_ = ['../_base_/in1k_localmamba_recipe.py']

model = dict(
    backbone=dict(type='vssm_mm.LocalVim', arch='search', drop_path_rate=0.1),
    head=dict(in_channels=128))
custom_hooks = []
train_cfg = dict(max_epochs=100)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20, end=100,
         convert_to_iter_based=True),
]
