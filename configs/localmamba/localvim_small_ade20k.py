# LocalVim-S UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images, fp32); the LocalVim-T
# settings with width 384. The official config points its pretrained weights at the LocalVMamba-S
# checkpoint (no key matches, so that run started from scratch); this one loads LocalVim-S:
#   python tools/convert_checkpoint.py --arch localvim-s local_vim_small.ckpt checkpoints/localvim_small_in1k.pth
_base_ = ['./localvim_tiny_ade20k.py']

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/localvim_small_in1k.pth',
                      prefix='backbone.')),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))
