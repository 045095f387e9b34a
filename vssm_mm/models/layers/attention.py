"""Channel attention blocks (squeeze-excitation variants) shared by the families."""
import torch
import torch.nn.functional as F
from torch import nn

from vssm_mm.ops.norm_gate import layer_norm_mean


class TokenChannelAttention(nn.Module):
    """Channel gate from the normalised mean token: ``x * sigmoid(W2 GELU(W1 mean(LN(x))))``.

    EfficientVMamba's and LocalMamba's "BiAttn" (its spatial branch is disabled in both). Works
    on channels-last input of any rank: the mean runs over every axis but the batch and the
    channels. The un-normalised input is what gets scaled.

    Args:
        channels (int): ``C``.
        ratio (float): The bottleneck is ``int(C * ratio)`` wide.
    """

    def __init__(self, channels: int, ratio: float = 0.125):
        super().__init__()
        reduced = int(channels * ratio)
        self.norm = nn.LayerNorm(channels)
        self.reduce = nn.Linear(channels, reduced)
        self.expand = nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel scale, ``(B, 1, ..., 1, C)``, that :meth:`forward` multiplies by."""
        # The mean normalised token; in float32 CPU inference one compiled pass that never
        # writes the normalised tokens (layer_norm_mean).
        summary = layer_norm_mean(x.reshape(x.shape[0], -1, x.shape[-1]), self.norm)
        summary = summary.view(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
        return torch.sigmoid(self.expand(F.gelu(self.reduce(summary))))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation on NCHW maps: ``x * sigmoid(W2 ReLU(W1 mean_HW(x)))``.

    Args:
        channels (int): ``C``.
        reduced (int): Bottleneck width.
        bias (bool): Biases in the two projections.
    """

    def __init__(self, channels: int, reduced: int, bias: bool = True):
        super().__init__()
        self.reduce = nn.Linear(channels, reduced, bias=bias)
        self.expand = nn.Linear(reduced, channels, bias=bias)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``inplace=True`` scales ``x`` itself (no gradient can flow through it then)."""
        scale = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean(dim=(2, 3))))))
        return x.mul_(scale[:, :, None, None]) if inplace else x * scale[:, :, None, None]
