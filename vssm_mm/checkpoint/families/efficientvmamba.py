"""EfficientVMamba key map and the official architectures.

The released files (Hugging Face ``TerryPei/EfficientVMamba-{Tiny,Small,Base}``) hold one state
dict under ``'state_dict'`` with the ``module.module.`` prefix of an EMA copy of a DDP model
(stripped by the converter); official mmdet/mmseg checkpoints (``MM_EfficientVSSM``) hold the
same backbone keys under ``backbone.``, with output norms ``outnorm{i}``.

Official -> ours: ``patch_embed.{0,2}`` -> ``stem.{proj,norm}``; EVSS stages
``layers.{i}.blocks.{j}.{op,conv_branch,se}`` -> ``stages.{i}.blocks.{j}.{mixer,local,
channel_attn}``; the inverted-residual stages are index-keyed officially (``layers.{i}.0`` and
``.{d+1}`` are parameter-free permutes, ``1..d`` the blocks, ``d+2`` the patch merging) and
become ``stages.{i}.blocks.{j}`` / ``stages.{i}.downsample``; their squeeze-excitation 1x1
convolutions become linears.
"""
from ..convert import ArchSpec, register_arch, register_key_map
from . import VMAMBA_CLASSIFIER_KEYS, rename, ssm_rules

CLASSIFIER_KEYS = VMAMBA_CLASSIFIER_KEYS
RULES = [
    (r'^patch_embed\.0\.', 'stem.proj.'),
    (r'^patch_embed\.2\.', 'stem.norm.'),
    (r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
    (r'^layers\.(\d+)\.downsample\.', r'stages.\1.downsample.'),
    (r'^layers\.(\d+)\.\d+\.(norm|reduction)\.', r'stages.\1.downsample.\2.'),
    (r'^layers\.(\d+)\.(\d+)\.', lambda m: f'stages.{m[1]}.blocks.{int(m[2]) - 1}.'),
    (r'\.op\.conv2d\.', '.mixer.conv.'),
] + ssm_rules('op', 'mixer.ssm') + [
    (r'\.op\.', '.mixer.'),
    (r'\.conv_branch\.0\.', '.local.dwconv.'),
    (r'\.conv_branch\.1\.', '.local.norm.'),
    (r'\.conv_branch\.3\.', '.local.pwconv.'),
    (r'\.se\.(global_reduce|conv_reduce)\.', '.channel_attn.reduce.'),
    (r'\.se\.(channel_select|conv_expand)\.', '.channel_attn.expand.'),
    (r'\.se\.norm\.', '.channel_attn.norm.'),
    (r'\.conv_pw\.', '.expand.'),
    (r'\.conv_dw\.', '.depthwise.'),
    (r'\.conv_pw2\.', '.project.'),
    (r'^outnorm(\d+)\.', r'out_norms.\1.'),
]


def key_map(state_dict):
    """Official EfficientVMamba backbone keys -> ours."""
    squeezed = {k: (v.flatten(1) if '.se.conv_' in k and k.endswith('.weight') else v)
                for k, v in state_dict.items()}
    return rename(squeezed, RULES)


register_key_map('EfficientVMamba', key_map)

for name, arch in [('efficientvmamba-t', 'tiny'), ('efficientvmamba-s', 'small'),
                   ('efficientvmamba-b', 'base')]:
    register_arch(name, ArchSpec(backbone='EfficientVMamba', arch=arch,
                                 classifier_keys=CLASSIFIER_KEYS))
