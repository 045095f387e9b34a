"""Building blocks shared by the backbone families (plain nn.Modules, not registered)."""
from .attention import SqueezeExcite, TokenChannelAttention
from .batchnorm_folding import ConvBN, conv_bn
from .downsample import ConvDownsample, PatchMerging
from .drop import DropPath
from .norm import LayerNorm2d, Linear2d, RMSNorm
from .ssm import SelectiveSSM, compute_dtype, scan_sequences
from .stage import Stage
from .stems import PatchifyStem

__all__ = ['ConvBN', 'ConvDownsample', 'DropPath', 'LayerNorm2d', 'Linear2d', 'PatchMerging',
           'PatchifyStem', 'RMSNorm', 'SelectiveSSM', 'SqueezeExcite', 'Stage',
           'TokenChannelAttention', 'compute_dtype', 'conv_bn', 'scan_sequences']
