"""Recognise official checkpoints on load and map them onto our module tree.

:func:`map_official_checkpoint` is what ``load_from`` and ``init_cfg=dict(type='Pretrained')``
go through (see :mod:`.mmengine_hook`): a file in an official layout (a classifier from the
official trainers, or an official mmdet / mmseg backbone) comes back as
``{'state_dict': {'backbone.*', 'head.*', ...}, 'meta': ...}`` in our names; anything else comes
back unchanged. The family is recognised from key names that only its official layout has;
every key must then be accounted for (:class:`ConversionError` lists what is left over).

:func:`find_archs` names the converter architectures (``tools/convert_checkpoint.py --arch``)
whose model a state dict fits, in our layout or an official one.
"""
import functools
from typing import Dict, List, Optional, Tuple

import torch

from .convert import ARCHS, build_reference_keys, convert_state_dict
from .state_dict import ConversionError, StateDict, pick_weights, strip_prefixes

#: Backbone class -> key fragments that only its official layout has.
OFFICIAL_SIGNATURES = {
    'MSVMamba': ('.op.conv2d_b1.', ),
    'EfficientVMamba': ('.conv_branch.', ),
    'LocalVMamba': ('.op.multi_scan.', ),
    'LocalVim': ('.mixer.conv1d_0.', '.mixer.A_log_0'),
    'GroupMamba': ('.attn.mamba_g1.', ),
}
#: Backbone class -> the top-level names of our module tree (what a mapped key starts with).
OUR_ROOTS = {
    'MSVMamba': ('stem.', 'stages.', 'out_norms.'),
    'EfficientVMamba': ('stem.', 'stages.', 'out_norms.'),
    'LocalVMamba': ('stem.', 'stages.', 'out_norms.'),
    'LocalVim': ('patch_embed.', 'pos_embed', 'cls_token', 'rope.', 'blocks.', 'norm_f.',
                 'out_norms.'),
    'GroupMamba': ('stem.', 'stages.', 'out_norms.', 'class_block.', 'class_norm.'),
}
#: Top-level entries of a checkpoint that hold weights (see :func:`pick_weights`).
WEIGHT_CONTAINERS = ('model_ema', 'state_dict_ema', 'ema_model', 'model', 'state_dict', 'module')
#: Official names that no key of ours contains.
OFFICIAL_ONLY = ('.op.', '.attn.', 'mamba_g', 'multi_scan', 'conv_branch', 'convFFN', '.se.')


def official_family(keys) -> Optional[str]:
    """The backbone whose official layout these keys are in, or None."""
    keys = list(keys)
    for backbone, fragments in OFFICIAL_SIGNATURES.items():
        if any(fragment in key for key in keys for fragment in fragments):
            return backbone
    return None


@functools.lru_cache(maxsize=None)
def _reference(arch: str, dense: bool) -> Dict[str, tuple]:
    """Our backbone's keys and shapes for ``arch`` (built on the meta device: no memory)."""
    with torch.device('meta'):
        shapes = build_reference_keys(ARCHS[arch], dense, num_classes=None)
    return {k: s for k, s in shapes.items() if k.startswith('backbone.')}


def _fits(backbone_keys: Dict[str, tuple], reference: Dict[str, tuple], dense: bool) -> bool:
    if dense:  # a dense model may build output norms for a subset of the stages only
        missing = set(reference) - set(backbone_keys)
        return set(backbone_keys) <= set(reference) and \
            all('out_norms.' in k for k in missing) and \
            all(reference[k] == s for k, s in backbone_keys.items())
    return backbone_keys == reference


def _backbone_shapes(state_dict: StateDict) -> Tuple[Dict[str, tuple], bool]:
    keys = {strip_prefixes(k): tuple(v.shape) for k, v in state_dict.items()
            if isinstance(v, torch.Tensor)}
    backbone = {k: s for k, s in keys.items() if k.startswith('backbone.')}
    dense = any(k.startswith(('neck.', 'decode_head.', 'rpn_head.', 'roi_head.', 'bbox_head.'))
                for k in keys)
    return backbone, dense


def find_archs(state_dict: StateDict, backbone: Optional[str] = None) -> List[str]:
    """Names in :data:`ARCHS` whose model this state dict fits (keys and shapes of the backbone).

    Accepts our layout (``backbone.*`` keys, as our classifiers and detectors save them) and the
    official ones (mapped first). Only the backbone is compared: any head width, any neck.

    Args:
        state_dict: A state dict (not the checkpoint container).
        backbone: Only try the architectures of this backbone class.
    """
    family = official_family(state_dict)
    if family is not None:
        state_dict = _convert(state_dict, family)
        backbone = backbone or family
    shapes, dense = _backbone_shapes(state_dict)
    if not shapes:
        return []
    names = [name for name, spec in ARCHS.items()
             if backbone in (None, spec.backbone) and isinstance(spec.arch, str)]
    return [name for name in names if _fits(shapes, _reference(name, dense), dense)]


def _convert(state_dict: StateDict, family: str) -> StateDict:
    spec = next(spec for spec in ARCHS.values() if spec.backbone == family)
    return convert_state_dict(state_dict, spec)[0]


def left_over_keys(state_dict: StateDict, family: str) -> List[str]:
    """Backbone keys of a mapped state dict that are not in our names (the map missed them)."""
    roots = OUR_ROOTS[family]
    return sorted(k for k in state_dict if k.startswith('backbone.') and (
        not k[len('backbone.'):].startswith(roots) or any(f in k for f in OFFICIAL_ONLY)))


def map_official_checkpoint(checkpoint):
    """An official checkpoint in our layout; anything else unchanged.

    Returns ``{'state_dict': converted, 'meta': {'official_layout': <backbone class>,
    'archs': [names in ARCHS it fits], 'weights': 'ema' | 'raw' | 'bare', ...}, ...}`` for an
    official file (EMA weights when the file has them, as ``tools/convert_checkpoint.py`` does;
    the file's other top-level entries are kept, its weight containers replaced).
    ``archs`` is empty for a custom size; whether the weights fit the model is then checked
    when they are loaded into it.

    Raises:
        ConversionError: The file is in an official layout but some of its keys have no place
            in our module tree; lists them.
    """
    if not isinstance(checkpoint, dict):
        return checkpoint
    try:
        state_dict, which = pick_weights(checkpoint)
    except ConversionError:
        return checkpoint
    family = official_family([strip_prefixes(k) for k in state_dict])
    if family is None:
        return checkpoint
    converted = _convert(state_dict, family)
    left_over = left_over_keys(converted, family)
    if left_over:
        raise ConversionError(
            f'this checkpoint is in the official {family} layout, but {len(left_over)} of its '
            'keys have no place in our model: ' + ', '.join(left_over[:20]) +
            (' ...' if len(left_over) > 20 else '') + '. Convert it with '
            'tools/convert_checkpoint.py --arch ARCH to see the key-by-key comparison.')
    meta = dict(checkpoint.get('meta') or {}, official_layout=family,
                archs=find_archs(converted, family), weights=which)
    # Other entries (epoch, message hub, ...) stay; every weight container is replaced.
    rest = {} if which == 'bare' else {
        k: v for k, v in checkpoint.items() if k not in WEIGHT_CONTAINERS and k != 'meta'}
    return dict(rest, state_dict=converted, meta=meta)
