"""Stems shared by the families."""
import torch
from torch import nn


class PatchifyStem(nn.Module):
    """Non-overlapping ``patch_size`` convolution, then LayerNorm; NCHW in, channels-last out.

    Args:
        out_channels (int): Width of the first stage.
        patch_size (int): Stride and kernel of the convolution (4 in the VMamba families).
    """

    def __init__(self, out_channels: int, patch_size: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(3, out_channels, patch_size, patch_size)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))
