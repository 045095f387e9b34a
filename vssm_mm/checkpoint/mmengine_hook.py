"""Route every checkpoint mmengine loads through :func:`safe_load`.

mmengine 0.10.7 reads checkpoints in several ways, none of them safe on its own:

* local files (``--resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')``,
  ``tools/test.py``) call ``torch.load`` without ``weights_only``: on torch >= 2.6 that refuses
  mmengine's own checkpoints, and with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` it runs any pickle;
* ``http://`` / ``https://`` (and ``torchvision://``, ``open-mmlab://``, ``mmcls://``, which
  resolve to URLs) go through ``torch.hub.load_state_dict_from_url``, whose ``weights_only``
  defaults to ``False``: a downloaded file runs whatever code it carries;
* ``s3://`` / ``petrel://``, ``pavi://`` and ``open-mmlab://`` names of local files call
  ``torch.load`` on what they fetched.

:func:`install_mmengine_loader` registers safe loaders for the local and URL schemes and makes
the ``torch.load`` that mmengine's checkpoint module calls the restricted one, so every scheme,
present or added later to that module, reads files with the same allow-list.
"""
import os
import os.path as osp
import types
from urllib.parse import urlparse

import torch

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


def load_from_http(filename, map_location=None, model_dir=None, progress=False):
    """Download ``filename`` into torch's hub cache once (rank 0 first), then load it safely."""
    from mmengine.dist import get_dist_info
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(urlparse(filename).path) or 'checkpoint.pth')
    rank, world_size = get_dist_info()
    if rank == 0 and not osp.isfile(cached):
        os.makedirs(model_dir, exist_ok=True)
        torch.hub.download_url_to_file(filename, cached, progress=progress)
    if world_size > 1:
        torch.distributed.barrier()
    return load_from_local(cached, map_location)


class _RestrictedTorch(types.ModuleType):
    """``torch`` as mmengine's checkpoint module sees it: everything, but ``load`` is safe."""

    def __init__(self):
        super().__init__('torch')

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, *args, **kwargs):
        return load_from_local(f, map_location)


def install_mmengine_loader() -> bool:
    """Make every checkpoint scheme of mmengine load through :func:`safe_load`. Idempotent."""
    global _INSTALLED
    if _INSTALLED:
        return True
    try:
        from mmengine.runner import checkpoint as mmengine_checkpoint
    except ImportError:
        return False
    loader = mmengine_checkpoint.CheckpointLoader
    loader.register_scheme(prefixes='', loader=load_from_local, force=True)
    loader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http, force=True)
    # torchvision://, open-mmlab://, mmcls:// resolve a name and call the module's
    # load_from_http; s3://, pavi:// and local open-mmlab:// files call the module's torch.load.
    mmengine_checkpoint.load_from_http = load_from_http
    mmengine_checkpoint.torch = _RestrictedTorch()
    _INSTALLED = True
    return True
