"""The ``vssm_mm`` registry scope.

``MODELS`` is a child of mmengine's root ``MODELS`` named after this package, so mmdet, mmseg
and mmpretrain configs build our backbones with ``type='vssm_mm.<Name>'``: mmengine imports
``vssm_mm.registry`` when it meets the scope prefix and then ``vssm_mm.models`` (``locations``),
with no ``custom_imports`` needed. ``HOOKS`` does the same for ``type='vssm_mm.<Hook>'``.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='vssm_mm', locations=['vssm_mm.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='vssm_mm', locations=['vssm_mm.engine'])

__all__ = ['MODELS', 'HOOKS']
