"""Route mmengine's local checkpoint loading through :func:`safe_load`.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; on torch >= 2.6 that means
``weights_only=True``, which refuses mmengine's own checkpoints, so ``--resume``, ``load_from``,
``init_cfg=dict(type='Pretrained')`` and ``tools/test.py`` all fail. Registering our loader for
local paths (the empty prefix) fixes all four without switching pickle safety off.
"""
from .safe_load import safe_load

_INSTALLED = False


def load_from_local(filename, map_location=None):
    """:func:`safe_load`, then official layouts mapped onto ours (:func:`map_official_checkpoint`).

    So ``load_from`` and ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``
    take official checkpoint files directly.
    """
    from .official import map_official_checkpoint
    checkpoint = safe_load(filename,
                           map_location=map_location if map_location is not None else 'cpu')
    return map_official_checkpoint(checkpoint)


def install_mmengine_loader() -> bool:
    """Register :func:`load_from_local` as mmengine's loader for local files. Idempotent."""
    global _INSTALLED
    if _INSTALLED:
        return True
    try:
        from mmengine.runner.checkpoint import CheckpointLoader
    except ImportError:
        return False
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    _INSTALLED = True
    return True
