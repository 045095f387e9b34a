"""LocalMamba key maps (LocalVim, LocalVMamba) and the official checkpoints.

LocalVim: ``head.*`` becomes the classifier's ``head.fc.*``; ``layers.{i}`` -> ``blocks.{i}``;
a layer's per-direction ``conv1d_k``, ``x_proj_k``, ``dt_proj_k``, ``A_log_k``, ``D_k`` are stacked
into one grouped ``mixer.conv`` and one ``mixer.ssm``; ``attn`` and ``multi_scan`` become
``mixer.direction_merge``. The ``A_log_k`` keep their values: trained checkpoints hold different
values per direction, because ``model.cuda()`` gives each of the official constructor's aliased
parameters its own storage (see docs/models/localmamba.md).

LocalVMamba: VMamba-style (``patch_embed`` -> ``stem``, ``layers.{i}.blocks.{j}.op`` ->
``stages.{i}.blocks.{j}.mixer``, ``classifier.norm`` -> the last output norm); its official
mmdet/mmseg checkpoints name their output norms ``outnorm{i}``.
"""
import re

import torch

from ..convert import ArchSpec, ConversionError, register_arch, register_key_map
from . import VMAMBA_CLASSIFIER_KEYS, rename, ssm_rules

MERGE_RULES = [
    (r'\.(?:attn|multi_scan\.attn)\.global_reduce\.', '.direction_merge.channel_attn.reduce.'),
    (r'\.(?:attn|multi_scan\.attn)\.channel_select\.', '.direction_merge.channel_attn.expand.'),
    (r'\.(?:attn|multi_scan\.attn)\.norm\.', '.direction_merge.channel_attn.norm.'),
    (r'\.multi_scan\.weights$', '.direction_merge.weights'),
    (r'^outnorm(\d+)\.', r'out_norms.\1.'),
]
VMAMBA_RULES = [
    (r'^patch_embed\.0\.', 'stem.proj.'),
    (r'^patch_embed\.2\.', 'stem.norm.'),
    (r'^layers\.(\d+)\.', r'stages.\1.'),
    (r'\.op\.conv2d\.', '.mixer.conv.'),
] + ssm_rules('op', 'mixer.ssm') + [(r'\.op\.', '.mixer.')] + MERGE_RULES
#: LocalVim per-direction parameter -> (our stacked parameter, stack (new axis) or concatenate).
VIM_DIRECTION_PARAMS = {
    'conv1d_{}.weight': ('conv.weight', False), 'conv1d_{}.bias': ('conv.bias', False),
    'x_proj_{}.weight': ('ssm.x_proj_weight', True),
    'dt_proj_{}.weight': ('ssm.dt_proj_weight', True),
    'dt_proj_{}.bias': ('ssm.dt_proj_bias', True), 'A_log_{}': ('ssm.A_log', False),
    'D_{}': ('ssm.D', False)}
VIM_DIRECTION = re.compile(
    r'^(.*\.mixer)\.(conv1d|x_proj|dt_proj|A_log|D)_(\d+)(\.weight|\.bias|)$')


def localvim_key_map(state_dict):
    """Official LocalVim backbone keys -> ours (per-direction parameters stacked)."""
    parts, rest = {}, {}
    for key, value in state_dict.items():
        match = VIM_DIRECTION.match(key)
        if match:
            name = f'{match[2]}_{{}}{match[4]}'
            parts.setdefault((match[1], name), {})[int(match[3])] = value
        else:
            rest[key] = value
    for (mixer, name), by_direction in parts.items():
        ours, stack = VIM_DIRECTION_PARAMS[name]
        if sorted(by_direction) != list(range(len(by_direction))):
            raise ConversionError(f'{mixer}: {name.format("k")} for directions '
                                  f'{sorted(by_direction)}; expected 0..K-1')
        tensors = [by_direction[k] for k in range(len(by_direction))]
        rest[f'{mixer}.{ours}'] = torch.stack(tensors) if stack else torch.cat(tensors)
    return rename(rest, [(r'^layers\.', 'blocks.')] + MERGE_RULES)


def localvmamba_key_map(state_dict):
    """Official LocalVMamba backbone keys -> ours."""
    return rename(state_dict, VMAMBA_RULES)


register_key_map('LocalVim', localvim_key_map)
register_key_map('LocalVMamba', localvmamba_key_map)


def convert_localvim(state_dict):
    """Official LocalVim classifier -> ``backbone.*`` + ``head.fc.*``."""
    if any(key.startswith('backbone.') for key in state_dict):
        raise ConversionError(
            'this is an official LocalVim detection/segmentation checkpoint; only the ImageNet '
            'checkpoints (local_vim_*.ckpt) convert. Initialise dense models from the converted '
            'classifier (init_cfg=dict(type="Pretrained", prefix="backbone.")), which resizes '
            'the position embedding and RoPE tables to the config image size')
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('head.'):
            converted['head.fc.' + key[len('head.'):]] = value
        else:
            converted['backbone.' + key] = value
    return converted, False


for name, arch in [('localvim-t', 'tiny'), ('localvim-t-mid', 'tiny_mid'),
                   ('localvim-s', 'small'), ('localvim-t-unsearched', 'tiny_unsearched'),
                   ('localvim-s-unsearched', 'small_unsearched'), ('localvim-search', 'search')]:
    register_arch(name, ArchSpec(backbone='LocalVim', arch=arch, convert=convert_localvim))

for name, arch in [('localvmamba-t', 'tiny'), ('localvmamba-s', 'small'),
                   ('localvmamba-t-search', 'tiny_search'),
                   ('localvmamba-s-search', 'small_search')]:
    register_arch(name, ArchSpec(backbone='LocalVMamba', arch=arch,
                                 classifier_keys=VMAMBA_CLASSIFIER_KEYS))
