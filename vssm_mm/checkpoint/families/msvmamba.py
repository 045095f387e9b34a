"""MSVMamba key map (both generations) and the official architectures.

Official (``layers.{i}.blocks.{j}.op.*``, ``patch_embed.{n}``, ``convFFN``) -> ours
(``stages.{i}.blocks.{j}.mixer.*``, ``stem``, ``ffn``). The SSM parameters of a block stack two
directions; v1 stores the low-resolution one first, ours (and v2) the full-resolution one, so
v1 files have the two halves swapped. The classifier's ``classifier.norm`` becomes the last
output norm; official mmdet/mmseg backbones name their output norms ``outnorm{i}``.
"""
import torch

from ..convert import ArchSpec, register_arch, register_key_map
from . import VMAMBA_CLASSIFIER_KEYS, VMAMBA_SSM_PARAMS, rename, ssm_rules

CLASSIFIER_KEYS = VMAMBA_CLASSIFIER_KEYS
STEMS = {'v1': [('0', 'proj'), ('2', 'norm')],
         'v2': [('0', 'conv1'), ('2', 'norm1'), ('5', 'conv2'), ('7', 'norm2')]}
RULES = [
    (r'^layers\.(\d+)\.', r'stages.\1.'),
    (r'\.blocks\.(\d+)\.norm\.', r'.blocks.\1.norm1.'),
    (r'\.op\.conv2d\.', '.mixer.scan.conv_full.'),
    (r'\.op\.conv2d_b1\.', '.mixer.scan.conv_low.'),
    (r'\.op\.se\.fc\.0\.', '.mixer.channel_attn.reduce.'),
    (r'\.op\.se\.fc\.2\.', '.mixer.channel_attn.expand.'),
] + ssm_rules('op', 'mixer.scan.ssm') + [
    (r'\.op\.', '.mixer.'),
    (r'\.convFFN\.linear1\.', '.ffn.fc1.'),
    (r'\.convFFN\.dwc\.', '.ffn.dwconv.'),
    (r'\.convFFN\.linear2\.', '.ffn.fc2.'),
    (r'\.downsample\.1\.', '.downsample.conv.'),
    (r'\.downsample\.3\.', '.downsample.norm.'),
    (r'^outnorm(\d+)\.', r'out_norms.\1.'),
]


def is_v2(state_dict) -> bool:
    return any(k.startswith('patch_embed.5.') or '.downsample.1.' in k for k in state_dict)


def key_map(state_dict):
    """Official MSVMamba backbone keys (v1 or v2) -> ours."""
    generation = 'v2' if is_v2(state_dict) else 'v1'
    out = {}
    for key, value in state_dict.items():
        if generation == 'v1' and key.rsplit('.', 1)[-1] in VMAMBA_SSM_PARAMS and '.op.' in key:
            value = torch.cat(value.chunk(2)[::-1])  # (low, full) -> (full, low)
        out[key] = value
    stem = [(rf'^patch_embed\.{index}\.', f'stem.{name}.') for index, name in STEMS[generation]]
    return rename(out, stem + RULES)


register_key_map('MSVMamba', key_map)

for name, arch in [('msvmamba-n', 'nano'), ('msvmamba-m', 'micro'), ('msvmamba-t', 'tiny'),
                   ('msvmamba2-t', 'v2_tiny'), ('msvmamba2-s', 'v2_small'),
                   ('msvmamba2-b', 'v2_base')]:
    register_arch(name, ArchSpec(backbone='MSVMamba', arch=arch, classifier_keys=CLASSIFIER_KEYS))
