"""Convert official checkpoints of the four families into vssm_mm checkpoints.

An official file is read with :func:`safe_load` (no arbitrary code), its weights are picked
(EMA or raw), renamed to our model's names and checked against a freshly built model of the
requested architecture, so that a mismatch is reported key by key instead of surfacing later as
a silently random layer. The result is ``{'state_dict': ..., 'meta': ...}``:

* a classification checkpoint converts to ``backbone.*`` + ``head.fc.*`` (mmpretrain
  ``ImageClassifier`` with ``LinearClsHead``), which also serves dense tasks through
  ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``;
* an official mmdet/mmseg checkpoint keeps its neck/head keys and has its backbone keys checked.
"""
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .safe_load import safe_load

StateDict = Dict[str, torch.Tensor]


class ConversionError(ValueError):
    """The checkpoint does not fit the requested architecture."""


@dataclass
class ArchSpec:
    """How to build our backbone for one official architecture and rename its keys.

    Attributes:
        backbone: Registered backbone class name (``vssm_mm.<backbone>``).
        arch: The backbone's ``arch`` argument.
        classifier_keys: Official classifier key prefix -> ours (applied before the
            ``backbone.`` prefix is added to everything else).
        rename: Optional extra renaming of backbone keys (official -> ours).
        head_norm_index: Stage whose ``outnorm`` the official final norm becomes.
        backbone_kwargs: Extra constructor arguments.
        convert: Optional full replacement of the renaming: ``state_dict -> (converted,
            is_dense)`` for families whose keys need more than prefixes.
        head_keys: Optional ``(num_classes, backbone) -> {key: shape}`` of the classifier head
            (default: ``head.fc`` = Linear(last width, num_classes)).
        num_classes_key: Converted key whose first dimension is the number of classes.
    """
    backbone: str
    arch: str
    classifier_keys: Dict[str, str] = field(default_factory=dict)
    rename: Optional[Callable[[str], str]] = None
    backbone_kwargs: dict = field(default_factory=dict)
    convert: Optional[Callable[[StateDict], Tuple[StateDict, bool]]] = None
    head_keys: Optional[Callable[[int, object], Dict[str, tuple]]] = None
    num_classes_key: str = 'head.fc.weight'


ARCHS: Dict[str, ArchSpec] = {}


def register_arch(name: str, spec: ArchSpec) -> None:
    ARCHS[name] = spec


def _load_families():
    """Import ``vssm_mm.checkpoint.families.*``: each module registers its architectures."""
    import importlib
    import pkgutil

    from . import families
    for info in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f'{families.__name__}.{info.name}')


_load_families()


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


def _strip(key: str, prefixes=('module.', '_orig_mod.')) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def build_reference_keys(spec: ArchSpec, dense: bool, num_classes: Optional[int]):
    """Names and shapes of our model's parameters for this arch."""
    import vssm_mm.models  # noqa: F401  (registers the backbones)
    from vssm_mm.registry import MODELS
    out_indices = (0, 1, 2, 3) if dense else (3, )
    backbone = MODELS.get(spec.backbone)(arch=spec.arch, out_indices=out_indices,
                                         **spec.backbone_kwargs)
    shapes = {f'backbone.{k}': tuple(v.shape) for k, v in backbone.state_dict().items()}
    if not dense and num_classes is not None:
        if spec.head_keys is not None:
            shapes.update(spec.head_keys(num_classes, backbone))
        else:
            width = backbone.dims[-1]
            shapes['head.fc.weight'] = (num_classes, width)
            shapes['head.fc.bias'] = (num_classes, )
    return shapes


def convert_state_dict(state_dict: StateDict, spec: ArchSpec) -> Tuple[StateDict, bool]:
    """Rename official keys; return ``(converted, is_dense_task_checkpoint)``."""
    if spec.convert is not None:
        return spec.convert({_strip(k): v for k, v in state_dict.items()})
    keys = [_strip(k) for k in state_dict]
    dense = any(k.startswith('backbone.') for k in keys)
    converted = {}
    for key, value in zip(keys, state_dict.values()):
        if dense:
            if key.startswith('backbone.') and spec.rename is not None:
                key = 'backbone.' + spec.rename(key[len('backbone.'):])
            converted[key] = value
            continue
        for src, dst in spec.classifier_keys.items():
            if key.startswith(src):
                converted[dst + key[len(src):]] = value
                break
        else:
            converted['backbone.' + (spec.rename(key) if spec.rename else key)] = value
    return converted, dense


def check_keys(converted: StateDict, reference: Dict[str, tuple], dense: bool) -> List[str]:
    """Compare with our model; return human-readable problems (empty when it fits)."""
    problems = []
    ours = set(reference)
    theirs = {k for k in converted if not dense or k.startswith('backbone.')}
    missing, unexpected = sorted(ours - theirs), sorted(theirs - ours)
    if missing:
        problems.append(f'{len(missing)} missing keys (in our model, not in the checkpoint): '
                        + ', '.join(missing[:20]) + (' ...' if len(missing) > 20 else ''))
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys (in the checkpoint, not in our model): '
                        + ', '.join(unexpected[:20]) + (' ...' if len(unexpected) > 20 else ''))
    wrong = [f'{k}: checkpoint {tuple(converted[k].shape)} vs model {reference[k]}'
             for k in sorted(ours & theirs) if tuple(converted[k].shape) != reference[k]]
    if wrong:
        problems.append(f'{len(wrong)} shape mismatches: ' + '; '.join(wrong[:10]))
    return problems


def convert_checkpoint(src: str, arch: str, weights: str = 'auto', trust: Optional[bool] = None):
    """Read an official checkpoint and return our ``{'state_dict', 'meta'}`` checkpoint.

    Raises:
        ConversionError: With the lists of missing/unexpected keys or wrong shapes when the
            file does not match ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f'unknown --arch {arch!r}; choose one of {sorted(ARCHS)}')
    spec = ARCHS[arch]
    state_dict, which = pick_weights(safe_load(src, trust=trust), weights)
    converted, dense = convert_state_dict(state_dict, spec)
    num_classes = converted[spec.num_classes_key].shape[0] \
        if spec.num_classes_key in converted else None
    problems = check_keys(converted, build_reference_keys(spec, dense, num_classes), dense)
    if problems:
        raise ConversionError(f'{os.path.basename(src)} does not match --arch {arch} '
                              f'({spec.backbone} {spec.arch!r}):\n  ' + '\n  '.join(problems))
    meta = dict(arch=arch, backbone=spec.backbone, backbone_arch=spec.arch, weights=which,
                task='dense' if dense else 'classification', source=os.path.basename(src))
    if num_classes is not None:
        meta['num_classes'] = int(num_classes)
    return dict(state_dict={k: v.contiguous() for k, v in converted.items()}, meta=meta)
