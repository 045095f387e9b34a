"""Downsampling layers shared by the families."""
import torch
import torch.nn.functional as F
from torch import nn

from .norm import LayerNorm2d


class PatchMerging(nn.Module):
    """Swin's patch merging on channels-last maps: 2x2 neighbours -> LayerNorm(4C) -> Linear.

    Odd sizes are zero-padded at the bottom / right, so ``H -> ceil(H / 2)``.

    Args:
        in_channels (int): ``C``.
        out_channels (int): Output width (``2C`` in every family).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Module):
    """3x3 stride-2 convolution then a channel LayerNorm, channels-first (``H -> ceil(H/2)``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.norm = LayerNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))
