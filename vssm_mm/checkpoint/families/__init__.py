"""One module per family: its official key map (``register_key_map``) and architectures
(``register_arch``).

A key map turns an official backbone state dict into ours: ordered regular-expression renames
(:func:`rename`) plus the tensor surgery a few layouts need (stacking per-direction parameters,
swapping the order of directions).
"""
import re
from typing import Callable, Dict, Sequence, Tuple, Union

import torch

Rules = Sequence[Tuple[str, Union[str, Callable]]]


def rename(state_dict: Dict[str, torch.Tensor], rules: Rules) -> Dict[str, torch.Tensor]:
    """Apply every ``(pattern, replacement)`` of ``rules`` in order to each key (``re.sub``;
    a replacement may be a function of the match)."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


#: VMamba-style SSM parameter names (official -> ours, :class:`SelectiveSSM`).
VMAMBA_SSM_PARAMS = {'x_proj_weight': 'x_proj_weight', 'dt_projs_weight': 'dt_proj_weight',
                     'dt_projs_bias': 'dt_proj_bias', 'A_logs': 'A_log', 'Ds': 'D'}
#: The VMamba-style classifier: its final norm becomes the last output norm.
VMAMBA_CLASSIFIER_KEYS = {'classifier.norm.': 'backbone.outnorm3.',
                          'classifier.head.': 'head.fc.'}


def ssm_rules(official_mixer: str, our_ssm: str):
    """Renames of the VMamba SSM parameters of ``official_mixer`` to ``our_ssm``."""
    return [(rf'\.{official_mixer}\.{official}$', f'.{our_ssm}.{ours}')
            for official, ours in VMAMBA_SSM_PARAMS.items()]
