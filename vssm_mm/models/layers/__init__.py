"""Building blocks shared by the backbone families (plain nn.Modules, not registered)."""
from .drop import DropPath
from .norm import LayerNorm2d, Linear2d, Permute
from .ssm import SSMParams, init_ssm_params, scan_directions

__all__ = ['DropPath', 'LayerNorm2d', 'Linear2d', 'Permute', 'SSMParams', 'init_ssm_params',
           'scan_directions']
