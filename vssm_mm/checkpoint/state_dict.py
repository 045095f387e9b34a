"""Reading a state dict out of a checkpoint container (no model code, no conversion)."""
from typing import Dict, Tuple

import torch

StateDict = Dict[str, torch.Tensor]


class ConversionError(ValueError):
    """The checkpoint does not fit the requested architecture."""


def pick_weights(checkpoint, weights: str = 'auto') -> Tuple[StateDict, str]:
    """Return ``(state_dict, which)`` from an official container.

    Args:
        checkpoint: What the official file holds: a dict with ``model_ema`` / ``model`` /
            ``state_dict`` / ``module``, or a bare state dict.
        weights: ``'ema'``, ``'raw'`` or ``'auto'`` (EMA when present, else raw).
    """
    if not isinstance(checkpoint, dict):
        raise ConversionError(f'expected a dict in the checkpoint, got {type(checkpoint).__name__}')
    if weights not in ('auto', 'ema', 'raw'):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    ema_keys = [k for k in ('model_ema', 'state_dict_ema', 'ema_model')
                if isinstance(checkpoint.get(k), dict)]
    raw_keys = [k for k in ('model', 'state_dict', 'module') if isinstance(checkpoint.get(k), dict)]
    if weights in ('auto', 'ema') and ema_keys:
        return dict(checkpoint[ema_keys[0]]), 'ema'
    if weights == 'ema':
        raise ConversionError(f'--weights ema: the checkpoint has no EMA weights (top-level keys: '
                              f'{sorted(checkpoint)[:12]}); use --weights raw')
    if raw_keys:
        return dict(checkpoint[raw_keys[0]]), 'raw'
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint), 'bare'
    raise ConversionError('no state dict found: expected one of model_ema, model, state_dict, '
                          f'module, or a bare state dict; top-level keys: {sorted(checkpoint)[:12]}')


def strip_prefixes(key: str, prefixes=('module.', '_orig_mod.')) -> str:
    """Drop the wrappers' prefixes (DDP's ``module.``, torch.compile's ``_orig_mod.``)."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key
