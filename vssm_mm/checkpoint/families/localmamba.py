"""Official LocalMamba checkpoints (hunto/LocalMamba releases and trainer files).

LocalVim keeps every official name (``norm_f`` included); only ``head.*`` becomes the
classifier's ``head.fc.*``. LocalVMamba's ``classifier.norm`` becomes ``outnorm3`` as for the
other VMamba-style families; its official mmdet/mmseg checkpoints (``backbone.outnorm{i}``)
already use our names.

The ``A_log_k`` of a LocalVim layer are kept as they are: trained checkpoints hold different
values per direction, because ``model.cuda()`` gives each of the official constructor's aliased
parameters its own storage (loading them into an aliased CPU model instead keeps only the last
one; see docs/models/localmamba.md).
"""
from ..convert import ArchSpec, ConversionError, register_arch

VMAMBA_CLASSIFIER_KEYS = {'classifier.norm.': 'backbone.outnorm3.',
                          'classifier.head.': 'head.fc.'}


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
