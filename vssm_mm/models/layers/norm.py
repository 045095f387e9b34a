import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (parameters as ``nn.LayerNorm(C)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A 1x1 convolution over NCHW maps stored like ``nn.Linear`` (weight ``(out, in)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight`` (Mamba's RMSNorm, weight only)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics (float64 for float64 inputs), as the SSM's dtype policy.
        xf = x.double() if x.dtype == torch.float64 else x.float()
        out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight
        return out.to(x.dtype)
