# LocalVim-T UperNet on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images, fp32), as the
# official config: mmseg's ViT-B UperNet recipe without its multi-level neck, so the four
# heads' inputs are the (LayerNorm-ed) outputs of layers 4, 9, 14 and 19, all at stride 16.
# Like the official runs, the blocks use LayerNorm instead of the ImageNet model's RMSNorm (the
# RMSNorm weights load; the biases start at 0). Initialise from the converted ImageNet checkpoint
# (the position embedding and RoPE tables are resized to 32 x 32 when loaded):
#   python tools/convert_checkpoint.py --arch localvim-t local_vim_tiny.ckpt checkpoints/localvim_tiny_in1k.pth
_base_ = ['mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['vssm_mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='vssm_mm.LocalVim',
        arch='tiny',
        img_size=512,
        out_indices=(0, 1, 2, 3),
        final_norm=False,
        norm_type='ln',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/localvim_tiny_in1k.pth',
                      prefix='backbone.')),
    neck=None,
    decode_head=dict(in_channels=[192, 192, 192, 192]),
    auxiliary_head=dict(in_channels=192))
train_dataloader = dict(batch_size=2)
