"""Official GroupMamba checkpoints (bare EMA state dicts of the full classifier).

Our classification backbone (``out_type='cls_token'``) keeps every official backbone name,
including the class block ``post_network`` and ``norm4``; only the two linear heads move into
the distillation head: ``head.*`` -> ``head.head.*`` and ``dist_head.*`` -> ``head.dist_head.*``.
"""
from ..convert import ArchSpec, ConversionError, register_arch

CLASSIFIER_KEYS = {'head.': 'head.head.', 'dist_head.': 'head.dist_head.'}


def convert(state_dict):
    """Official classifier keys -> ``backbone.*`` + ``head.{head,dist_head}.*``."""
    if any(key.startswith('backbone.') for key in state_dict):
        raise ConversionError(
            'this file already has backbone.* keys; GroupMamba has no official detection or '
            'segmentation checkpoints, and vssm_mm / OpenMMLab checkpoints need no conversion')
    converted = {}
    for key, value in state_dict.items():
        for src, dst in CLASSIFIER_KEYS.items():
            if key.startswith(src):
                converted[dst + key[len(src):]] = value
                break
        else:
            converted['backbone.' + key] = value
    return converted, False


def head_keys(num_classes, backbone):
    width = backbone.dims[-1]
    return {f'head.{name}.{param}': shape
            for name in ('head', 'dist_head')
            for param, shape in (('weight', (num_classes, width)), ('bias', (num_classes, )))}


def arch_spec(arch):
    """The conversion recipe for ``arch`` (a name of ``GroupMamba.arch_zoo`` or a dict)."""
    return ArchSpec(backbone='GroupMamba', arch=arch, classifier_keys=CLASSIFIER_KEYS,
                    backbone_kwargs=dict(out_type='cls_token'), convert=convert,
                    head_keys=head_keys, num_classes_key='head.head.weight')


for name, arch in [('groupmamba-t', 'tiny'), ('groupmamba-s', 'small'), ('groupmamba-b', 'base')]:
    register_arch(name, arch_spec(arch))
