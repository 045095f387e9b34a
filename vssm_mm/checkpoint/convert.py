"""Convert official checkpoints of the four families into vssm_mm checkpoints.

An official file is read with :func:`safe_load` (no arbitrary code), its weights are picked
(EMA or raw), renamed to our model's names by the family's key map (``families/``) and checked against a freshly built model of the
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

from .safe_load import safe_load
from .state_dict import ConversionError, StateDict, pick_weights, strip_prefixes

__all__ = ['ARCHS', 'ArchSpec', 'ConversionError', 'KEY_MAPS', 'check_keys', 'convert_checkpoint',
           'convert_state_dict', 'pick_weights', 'register_arch', 'register_key_map']


@dataclass
class ArchSpec:
    """How to build our backbone for one official architecture and rename its keys.

    Attributes:
        backbone: Registered backbone class name (``vssm_mm.<backbone>``).
        arch: The backbone's ``arch`` argument.
        classifier_keys: Official classifier key prefix -> ours (applied before the
            ``backbone.`` prefix is added to everything else).
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
    backbone_kwargs: dict = field(default_factory=dict)
    convert: Optional[Callable[[StateDict], Tuple[StateDict, bool]]] = None
    head_keys: Optional[Callable[[int, object], Dict[str, tuple]]] = None
    num_classes_key: str = 'head.fc.weight'


ARCHS: Dict[str, ArchSpec] = {}
#: Backbone class name -> function mapping an official backbone state dict (no ``backbone.``
#: prefix) onto our module tree. Each family module under ``families/`` registers one.
KEY_MAPS: Dict[str, Callable[[StateDict], StateDict]] = {}


def register_arch(name: str, spec: ArchSpec) -> None:
    ARCHS[name] = spec


def register_key_map(backbone: str, key_map: Callable[[StateDict], StateDict]) -> None:
    KEY_MAPS[backbone] = key_map


def _load_families():
    """Import ``vssm_mm.checkpoint.families.*``: each module registers its architectures."""
    import importlib
    import pkgutil

    from . import families
    for info in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f'{families.__name__}.{info.name}')


_load_families()


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
    """Official keys -> ours; return ``(converted, is_dense_task_checkpoint)``.

    Three steps: drop wrapper prefixes; move the official classifier's keys (``classifier_keys``
    or the family's ``convert``) so that the backbone's official keys sit under ``backbone.``;
    then the family's key map (:data:`KEY_MAPS`) renames those backbone keys to our module tree.
    """
    state_dict = {strip_prefixes(k): v for k, v in state_dict.items()}
    if spec.convert is not None:
        converted, dense = spec.convert(state_dict)
    else:
        dense = any(k.startswith('backbone.') for k in state_dict)
        converted = {}
        for key, value in state_dict.items():
            if not dense:
                for src, dst in spec.classifier_keys.items():
                    if key.startswith(src):
                        key = dst + key[len(src):]
                        break
                else:
                    key = 'backbone.' + key
            converted[key] = value
    return map_backbone_keys(converted, spec.backbone), dense


def map_backbone_keys(state_dict: StateDict, backbone: str) -> StateDict:
    """Apply ``backbone``'s key map to the ``backbone.*`` entries; keep the others."""
    key_map = KEY_MAPS.get(backbone)
    if key_map is None:
        return dict(state_dict)
    inner = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    out = {k: v for k, v in state_dict.items() if not k.startswith('backbone.')}
    out.update({'backbone.' + k: v for k, v in key_map(inner).items()})
    return out


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
