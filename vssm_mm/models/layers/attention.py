"""Channel attention blocks (squeeze-excitation variants) shared by the families."""
import torch
import torch.nn.functional as F
from torch import nn


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
        dims = tuple(range(1, x.dim() - 1))
        summary = self.norm(x).mean(dim=dims, keepdim=True)
        return x * torch.sigmoid(self.expand(F.gelu(self.reduce(summary))))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]
