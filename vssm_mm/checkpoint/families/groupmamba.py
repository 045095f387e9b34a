"""GroupMamba key map and the official checkpoints (bare EMA state dicts of the classifier).

The two linear heads move into the distillation head (``head.*`` -> ``head.head.*``,
``dist_head.*`` -> ``head.dist_head.*``); the backbone's official layout maps onto ours:
``patch_embed1`` -> ``stem``; ``block{i}`` -> ``stages.{i-1}.blocks``; ``norm{i}`` and
``patch_embed{i+1}`` -> ``stages.{i-1}.downsample.{norm_in,proj,norm}``; ``post_network.0`` /
``norm4`` -> ``class_block`` / ``class_norm``; ``attn`` -> ``mixer``; the four groups'
``mamba_g{k}`` keep their projections in ``mixer.groups.{k-1}`` and stack their SSM parameters
in ``mixer.ssm``.
"""
import re

import torch

from ..convert import ArchSpec, ConversionError, register_arch, register_key_map
from . import rename

SSM_PARAMS = {'x_proj_weight': 'x_proj_weight', 'dt_projs_weight': 'dt_proj_weight',
              'dt_projs_bias': 'dt_proj_bias', 'A_logs': 'A_log', 'Ds': 'D'}
GROUP_SSM = re.compile(r'^(.*)\.mamba_g([1-4])\.(' + '|'.join(SSM_PARAMS) + ')$')
RULES = [
    (r'^patch_embed1\.', 'stem.'),
    (r'^patch_embed(\d)\.', lambda m: f'stages.{int(m[1]) - 2}.downsample.'),
    (r'^norm([1-3])\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.norm_in.'),
    (r'^block(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.'),
    (r'^post_network\.0\.', 'class_block.'),
    (r'^norm4\.', 'class_norm.'),
    (r'\.attn\.', '.mixer.'),
    (r'\.mamba_g([1-4])\.conv2d\.', lambda m: f'.groups.{int(m[1]) - 1}.conv.'),
    (r'\.mamba_g([1-4])\.', lambda m: f'.groups.{int(m[1]) - 1}.'),
    (r'^outnorm(\d+)\.', r'out_norms.\1.'),
]


def key_map(state_dict):
    """Official GroupMamba backbone keys -> ours (the groups' SSM parameters stacked)."""
    stacks, rest = {}, {}
    for key, value in state_dict.items():
        match = GROUP_SSM.match(key)
        if match:
            stacks.setdefault((match[1], match[3]), {})[int(match[2])] = value
        else:
            rest[key] = value
    for (layer, name), parts in stacks.items():
        if sorted(parts) != [1, 2, 3, 4]:
            raise ConversionError(f'{layer}: {name} of groups {sorted(parts)} only; a '
                                  'GroupMamba layer has four groups (mamba_g1..4)')
        rest[f'{layer}.ssm.{SSM_PARAMS[name]}'] = torch.cat([parts[k] for k in range(1, 5)])
    return rename(rest, RULES)


register_key_map('GroupMamba', key_map)

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
