"""The depthwise convolution, SiLU and scan-order gather that start a mixer, fused for CPU
inference.

``conv_silu_scan(x, conv, order)`` with a channel-last map x (B, H, W, C) is
``order.scan(F.silu(conv(x.permute(0, 3, 1, 2))))``: (B, K, C, L) sequences. For float32 CPU
tensors in inference, with a depthwise ``conv`` (odd square kernel, stride 1, zero padding
k // 2) and the kernels of ``vssm_mm._C_cpu`` built, it is one compiled pass
(csrc/cpu/conv_scan_cpu.cpp) that computes each token where it is gathered and writes the
sequences channels-first; otherwise those three torch ops, a pass over the map each. The fused
pass computes a pixel once per direction that reads it, so it pays for orders that read each
pixel once, such as EfficientVMamba's four sub-grids (docs/kernels.md).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .norm_gate import compiled_inference
from .scan_orders.order import ScanOrder
from .selective_scan.cpu_backend import extension_with


def _extension():
    return extension_with('dwconv_silu_scan')


def fusable(conv: nn.Conv2d, channels: int) -> bool:
    """Whether ``conv`` is a depthwise convolution the fused pass computes: ``channels`` in and
    out, one group per channel, an odd square kernel, stride 1, dilation 1 and zero padding of
    half the kernel."""
    k = conv.kernel_size[0]
    return (conv.in_channels == conv.out_channels == conv.groups == channels
            and conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.padding == (k // 2, k // 2)
            and conv.padding_mode == 'zeros')


def _channel_last(x: torch.Tensor) -> bool:
    _, height, width, channels = x.shape
    return ((channels <= 1 or x.stride(3) == 1) and (width <= 1 or x.stride(2) == channels)
            and (height <= 1 or x.stride(1) == width * channels))


def conv_silu_scan(x: torch.Tensor, conv: nn.Conv2d, order: ScanOrder) -> torch.Tensor:
    """``order.scan(silu(conv(x)))`` for a channel-last map ``x`` (B, H, W, C): (B, K, C, L).

    Compiled in float32 CPU inference (see the module docstring); torch ops otherwise.
    """
    if x.dim() != 4:
        raise ValueError(f'conv_silu_scan expects a channel-last map (B, H, W, C), got shape '
                         f'{tuple(x.shape)}')
    if (order.height, order.width) != tuple(x.shape[1:3]):
        raise ValueError(f'{order} does not fit a map of spatial size {tuple(x.shape[1:3])}; '
                         'build the order for that size with get_scan_order(directions, H, W)')
    ext = _extension()
    if (ext is not None and fusable(conv, x.shape[3]) and _channel_last(x)
            and compiled_inference(x, conv.weight, conv.bias)):
        return ext.dwconv_silu_scan(x, conv.weight, conv.bias, order.index)
    return order.scan(F.silu(conv(x.permute(0, 3, 1, 2))))
