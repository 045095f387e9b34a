"""Building blocks shared by the backbone families (plain nn.Modules, not registered)."""
from .attention import SqueezeExcite, TokenChannelAttention
from .downsample import ConvDownsample, PatchMerging
from .drop import DropPath
from .norm import LayerNorm2d, Linear2d, RMSNorm
from .ssm import SelectiveSSM, compute_dtype, scan_sequences
from .stage import Stage
from .stems import PatchifyStem

__all__ = ['ConvDownsample', 'DropPath', 'LayerNorm2d', 'Linear2d', 'PatchMerging', 'PatchifyStem',
           'RMSNorm', 'SelectiveSSM', 'SqueezeExcite', 'Stage', 'TokenChannelAttention',
           'compute_dtype', 'scan_sequences']
