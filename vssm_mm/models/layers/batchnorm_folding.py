"""Convolution + BatchNorm pairs, with the BatchNorm folded into the convolution in inference.

``conv_bn(conv, bn, x)`` is ``bn(conv(x))``. When ``bn`` uses its running statistics (eval
mode, or ``norm_eval``) in float32 CPU inference (``vssm_mm.ops.norm_gate.cpu_inference``), it
is one convolution whose weight and bias have the BatchNorm folded in:
``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
That saves the BatchNorm's pass over the map (EfficientVMamba's inverted residuals and local
branches are bound by memory traffic on a CPU). The folded tensors are cached per convolution
and recomputed when any of the six tensors changes (their version counters and storage).
Training, gradients, GPUs and other dtypes run the two modules.
"""
import weakref

import torch
from torch import nn

from vssm_mm.ops.norm_gate import cpu_inference

_FOLDED: 'weakref.WeakKeyDictionary[nn.Conv2d, tuple]' = weakref.WeakKeyDictionary()


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    # Inference tensors (a model made under torch.inference_mode()) have no version counter:
    # their folds are not cached (they cannot change in place outside inference mode anyway,
    # but inside it they can).
    key = None if any(t is not None and t.is_inference() for t in tensors) else \
        (id(bn), float(bn.eps)) + tuple(
            None if t is None else (t.data_ptr(), t._version) for t in tensors)
    cached = _FOLDED.get(conv)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
        bias = bias * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    if key is not None:
        _FOLDED[conv] = (key, weight, bias)
    return weight, bias


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; one convolution with ``bn`` folded in for float32 CPU inference."""
    if bn.training or bn.running_mean is None or bn.running_var is None or \
            not cpu_inference(x, conv.weight, conv.bias, bn.weight, bn.bias):
        return bn(conv(x))
    weight, bias = _folded(conv, bn)
    return conv._conv_forward(x, weight, bias)


class ConvBN(nn.Sequential):
    """``nn.Sequential(conv, bn)`` (the same state_dict keys, ``0.*`` and ``1.*``) whose forward
    is :func:`conv_bn`."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__(conv, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn(self[0], self[1], x)
