"""Necks that some configs need and mm* does not provide."""
from typing import Sequence

import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.registry import MODELS

from .layers import LayerNorm2d


class LN2d(LayerNorm2d):
    """Channel LayerNorm for NCHW maps as a config norm type (``dict(type='vssm_mm.LN2d')``).

    ``_abbr_`` gives mmcv's ConvModule the attribute name the official ViTDet ``LN2d`` gets.
    """
    _abbr_ = 'norm_layer'


if 'LN2d' not in MODELS.module_dict:
    MODELS.register_module('LN2d', module=LN2d)


class _ConvNorm(nn.Module):
    """Conv (no bias) + LN2d, named like mmcv's ConvModule with an LN2d norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              bias=False)
        self.norm_layer = LN2d(out_channels)

    def forward(self, x):
        return self.norm_layer(self.conv(x))


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """ViTDet's simple feature pyramid from one stride-16 map (LocalVim detection).

    Strides 4 (two 2x transposed convs), 8, 16 and 32 (max-pool), each through a 1x1 lateral
    and a 3x3 output conv with LN2d; extra levels by stride-2 subsampling.

    Args:
        backbone_channel (int): Channels of the backbone map.
        in_channels (list[int]): Channels of the four pyramid inputs
            (``[C/4, C/2, C, C]``).
        out_channels (int): Output channels.
        num_outs (int): Number of output levels (>= 4).
    """

    def __init__(self, backbone_channel: int, in_channels: Sequence[int], out_channels: int,
                 num_outs: int, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        c = backbone_channel
        expected = [c // 4, c // 2, c, c]
        if list(in_channels) != expected:
            raise ValueError(f'SimpleFPN: in_channels must be {expected} for backbone_channel '
                             f'{c}, got {list(in_channels)}')
        self.num_outs = num_outs
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2), LN2d(c // 2), nn.GELU(),
                                  nn.ConvTranspose2d(c // 2, c // 4, 2, 2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2))
        self.lateral_convs = nn.ModuleList([_ConvNorm(ch, out_channels, 1) for ch in in_channels])
        self.fpn_convs = nn.ModuleList(
            [_ConvNorm(out_channels, out_channels, 3) for _ in in_channels])

    def forward(self, x) -> tuple:
        if isinstance(x, (tuple, list)):
            x = x[-1]
        # Strides 4, 8, 16 (the map itself) and 32 (max-pooled); only the first two learn.
        inputs = [self.fpn1(x), self.fpn2(x), x, F.max_pool2d(x, kernel_size=2, stride=2)]
        outs = [fpn(lateral(feat)) for feat, lateral, fpn in
                zip(inputs, self.lateral_convs, self.fpn_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
