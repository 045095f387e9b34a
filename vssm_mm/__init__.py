"""Visual state-space (Mamba) backbones for OpenMMLab."""
from .checkpoint import install_mmengine_loader
from .version import __version__

# Makes resume / load_from / init_cfg=Pretrained / test work on torch >= 2.6 without
# disabling pickle safety (see vssm_mm/checkpoint/mmengine_hook.py).
install_mmengine_loader()

__all__ = ['__version__']
