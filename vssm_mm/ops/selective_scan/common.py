"""Helpers shared by the selective-scan implementations."""
import torch

# F.softplus returns x unchanged above this value; the CUDA kernels do the same.
SOFTPLUS_THRESHOLD = 20.0


def compute_dtype(u):
    """fp64 stays fp64 (for gradcheck); every other dtype is computed in fp32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def delta_pre_activation(delta, delta_bias, dtype):
    """delta + bias in the compute dtype, before the optional softplus."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return delta


def expand_delta_groups(delta, channels):
    """Map (B, D_delta, L) onto (B, channels, L): channel d uses row d // r.

    This is VMamba's "oflex" rule: every delta channel is shared by r =
    channels / D_delta consecutive channels of u.
    """
    ratio = channels // delta.shape[1]
    return delta if ratio == 1 else delta.repeat_interleave(ratio, dim=1)


def reduce_delta_groups(grad, delta_channels):
    """Adjoint of :func:`expand_delta_groups` (sum over the shared channels)."""
    batch, channels, length = grad.shape
    if channels == delta_channels:
        return grad
    return grad.view(batch, delta_channels, channels // delta_channels,
                     length).sum(2)
