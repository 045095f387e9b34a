"""Does a checkpoint fit a model? Strict loads for evaluation, summaries for pretraining.

mmengine loads ``load_from`` and ``tools/test.py`` checkpoints with ``strict=False``: a
checkpoint of another architecture prints hundreds of size-mismatch lines and then a randomly
initialised model is evaluated, exit code 0. :func:`check_checkpoint_fits` compares the
checkpoint with the model first and raises :class:`CheckpointMismatchError` (a short summary
and, when the checkpoint says so, which architecture or config it belongs to) unless a partial
load was asked for. :func:`load_pretrained` is the non-strict ``init_cfg=Pretrained`` load with
a one-line summary of what was not loaded.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's weights do not fit the model."""


@dataclass
class KeyReport:
    """How a state dict compares with a model's."""
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 3) -> str:
        def some(keys):
            return ', '.join(keys[:limit]) + (', ...' if len(keys) > limit else '')

        parts = [f'{len(self.missing)} missing' + (f' ({some(self.missing)})'
                                                   if self.missing else ''),
                 f'{len(self.unexpected)} unexpected' + (f' ({some(self.unexpected)})'
                                                         if self.unexpected else ''),
                 f'{len(self.mismatched)} of another shape' + (f' ({some(self.mismatched)})'
                                                               if self.mismatched else '')]
        return '; '.join(parts)


def weights_of(checkpoint) -> Dict[str, torch.Tensor]:
    """The state dict inside an mmengine/vssm_mm checkpoint (or a bare one), ``module.`` off."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(
            f'the checkpoint holds {type(checkpoint).__name__}, not a state dict')
    return {re.sub(r'^module\.', '', k): v for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def compare_weights(model: nn.Module, state: Dict[str, torch.Tensor]) -> KeyReport:
    ours = model.state_dict()
    report = KeyReport()
    for key, value in ours.items():
        if key not in state:
            report.missing.append(key)
        elif tuple(state[key].shape) != tuple(value.shape):
            report.mismatched.append(f'{key} {tuple(state[key].shape)} vs {tuple(value.shape)}')
        else:
            report.loaded.append(key)
    report.unexpected = [key for key in state if key not in ours]
    return report


def checkpoint_origin(checkpoint) -> Optional[str]:
    """What the checkpoint was made for: converter meta, the saving run's config, or else the
    architectures its backbone weights fit."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        meta = {}
    if meta.get('arch'):
        return (f"it was converted with --arch {meta['arch']} ({meta.get('backbone')} "
                f"arch={meta.get('backbone_arch')!r}, {meta.get('task', 'unknown')} task)")
    text = meta.get('cfg')
    if isinstance(text, str):
        backbone = text[text.find('backbone=dict('):] if 'backbone=dict(' in text else ''
        kind = re.search(r"type='([\w.]+)'", backbone)
        arch = re.search(r"arch='([\w-]+)'", backbone)
        run = meta.get('experiment_name', '')
        config = re.sub(r'_\d{8}_\d{6}$', '', run) if run else None
        if kind:
            return (f'it was saved by a run of config {config or "?"} with backbone '
                    f"{kind.group(1)}" + (f" arch={arch.group(1)!r}" if arch else ''))
    from .official import find_archs
    try:
        archs = find_archs(weights_of(checkpoint))
    except Exception:  # telling is a courtesy; the mismatch is reported either way
        archs = []
    if archs:
        return 'its backbone weights fit --arch ' + ' / '.join(archs)
    return None


def unwrap(model: nn.Module) -> nn.Module:
    from mmengine.model import BaseTTAModel, is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    if isinstance(model, BaseTTAModel):
        model = model.module
    return model


def check_checkpoint_fits(model: nn.Module, filename: str, partial: bool = False,
                          option: str = '--partial-load') -> KeyReport:
    """Raise :class:`CheckpointMismatchError` unless ``filename`` fits ``model`` exactly.

    Args:
        model: The model (wrappers and TTA models are unwrapped).
        filename: The checkpoint, read through mmengine's (safe) loaders.
        partial: Accept a partial fit (then only the summary is returned).
        option: How the user asks for a partial load, for the message.
    """
    from mmengine.runner.checkpoint import _load_checkpoint
    checkpoint = _load_checkpoint(filename, map_location='cpu')
    report = compare_weights(unwrap(model), weights_of(checkpoint))
    if report.exact or partial:
        return report
    origin = checkpoint_origin(checkpoint)
    total = len(report.loaded) + len(report.missing) + len(report.mismatched)
    raise CheckpointMismatchError(
        f'{filename} does not fit this config\'s model: {len(report.loaded)} of {total} '
        f'tensors fit; {report.summary()}.' + (f'\nThe checkpoint says {origin}.' if origin
                                               else '') +
        '\nUse the config the checkpoint was trained with, convert an official checkpoint with '
        f'tools/convert_checkpoint.py, or pass {option} to load what fits (the rest keeps its '
        'initialisation).')


def load_pretrained(module: nn.Module, checkpoint: str, prefix: Optional[str] = None,
                    map_location='cpu') -> KeyReport:
    """``init_cfg=dict(type='Pretrained')`` for a backbone: non-strict, one summary line.

    Loads the tensors whose names and shapes fit, keeps the initialisation of the rest and logs
    one line saying how many were loaded and what was not.
    """
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_with_prefix
    if prefix:
        state = _load_checkpoint_with_prefix(prefix, checkpoint, map_location=map_location)
    else:
        state = weights_of(_load_checkpoint(checkpoint, map_location=map_location))
    report = compare_weights(module, state)
    fitting = {k: state[k] for k in report.loaded}
    module.load_state_dict(fitting, strict=False)
    what = f'{prefix}* of ' if prefix else ''
    line = (f'loaded {len(report.loaded)}/{len(module.state_dict())} tensors of '
            f'{type(module).__name__} from {what}{checkpoint}')
    print_log(line + ('' if report.exact else f'; not loaded: {report.summary()}'),
              logger='current')
    return report
