"""LayerNorm kernels for float32 CPU inference, with the torch ops everywhere else.

* :func:`norm_gate_channels`: LayerNorm over the channels of a channels-first map, then an
  optional SiLU gate;
* :func:`layer_norm_mean`: the mean over tokens of each token's LayerNorm (channel attention).

``norm_gate_channels(x, norm, z)`` with x and z (B, C, J) is
``layer_norm(x.transpose(1, 2)) * silu(z.transpose(1, 2))``, returned channels-first. For float32
CPU tensors in inference it runs the compiled kernel of ``vssm_mm._C_cpu`` (csrc/cpu/
norm_gate_cpu.cpp), one pass over the map with vectors along the pixels; on a channel-last map
the norm, the SiLU and the product are a pass each, after a transposing copy. Anywhere else
(gradients, GPU, other dtypes, FLOP counting, torch.compile) it runs those torch ops.
``layer_norm_mean`` likewise reads the tokens once, where ``norm(x).mean(1)`` writes the
normalised map and reads it back.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _extension():
    from .selective_scan.cpu_backend import extension_with
    return extension_with('layer_norm_mean')


def cpu_inference(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether these tensors (parameters included) are in float32 CPU inference: all float32 on
    the CPU, no gradient needed, no CPU autocast, no jit trace (the FLOP counters), not under
    torch.compile. The CPU inference paths of the models run then, with the same values as the
    standard ones."""
    tensors = [t for t in tensors if t is not None]
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.is_autocast_enabled('cpu'):  # autocast decides the dtypes: the standard ops
        return False
    if any(t.dtype != torch.float32 or t.device.type != 'cpu' for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def compiled_inference(*tensors: Optional[torch.Tensor]) -> bool:
    """:func:`cpu_inference`, and the kernels of ``vssm_mm._C_cpu`` built."""
    return cpu_inference(*tensors) and _extension() is not None


def norm_gate_channels(x: torch.Tensor, norm: nn.LayerNorm,
                       z: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``norm`` over the channels of ``x`` (B, C, J), times ``silu(z)`` (B, C, J) if given.

    The torch ops return ``layer_norm(...).to(z.dtype) * silu(z)``, channels-first (a transposed
    view); the compiled kernel a contiguous (B, C, J) float32 tensor.
    """
    if x.dim() != 3 or tuple(norm.normalized_shape) != (x.shape[1],):
        raise ValueError(f'norm_gate_channels expects x (B, C, J) and a LayerNorm over C; got x '
                         f'{tuple(x.shape)} and normalized_shape {tuple(norm.normalized_shape)}')
    if z is not None and z.shape != x.shape:
        raise ValueError(f'norm_gate_channels: z must have the shape of x, {tuple(x.shape)}; '
                         f'got {tuple(z.shape)}')
    if compiled_inference(x, z, norm.weight, norm.bias):
        return _extension().norm_gate_channels(x, norm.weight, norm.bias, float(norm.eps), z)
    y = F.layer_norm(x.transpose(1, 2), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    if z is not None:
        y = y.to(z.dtype) * F.silu(z.transpose(1, 2))
    return y.transpose(1, 2)


def layer_norm_mean(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x).mean(1)`` for x (B, T, C): the mean normalised token, (B, C).

    Compiled in float32 CPU inference (the normalised tokens are not written; the sums run in a
    fixed order, so the result does not depend on the number of threads); torch ops otherwise.
    """
    if x.dim() != 3 or tuple(norm.normalized_shape) != (x.shape[2],) or x.shape[1] == 0:
        raise ValueError(f'layer_norm_mean expects x (B, T, C) with T > 0 and a LayerNorm over '
                         f'C; got x {tuple(x.shape)} and normalized_shape '
                         f'{tuple(norm.normalized_shape)}')
    if compiled_inference(x, norm.weight, norm.bias):
        return _extension().layer_norm_mean(x, norm.weight, norm.bias, float(norm.eps))
    return norm(x).mean(1)
