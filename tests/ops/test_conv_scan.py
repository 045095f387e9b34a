"""The fused depthwise conv + SiLU + scan-order gather for CPU inference (vssm_mm/ops/conv_scan.py,
csrc/cpu/conv_scan_cpu.cpp).

The compiled pass runs in float32 CPU inference for a depthwise convolution it computes; it is
compared with the torch ops it replaces (conv, silu, then the order's gather) on maps whose
channels are and are not multiples of the vector width (the kernels' tails), odd sizes (the
atrous orders' zero tokens), borders (1 x 1 and 2 x 2 maps), kernels of 3 (taps in registers)
and other sizes, orders that read a pixel once and several times, every instruction set, with
and without bias; also identical results with one and two threads, the cases that must take
the torch ops, and the error messages.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vssm_mm.ops import conv_scan
from vssm_mm.ops.conv_scan import conv_silu_scan, fusable
from vssm_mm.ops.scan_orders import (ATROUS_DIRECTIONS, CROSS2D_DIRECTIONS, LOCALMAMBA_DIRECTIONS,
                                     get_scan_order)

ext = conv_scan._extension()
needs_kernel = pytest.mark.skipif(ext is None, reason='vssm_mm._C_cpu is not built')


def _conv(channels, k=3, bias=True, seed=0):
    conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=bias)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.5)
        if bias:
            conv.bias.copy_(torch.randn(channels, generator=gen))
    return conv


def _expected(x, conv, order):
    """The definition in float64: conv, silu, then the order's gather (torch ops)."""
    y = F.conv2d(x.double().permute(0, 3, 1, 2), conv.weight.double(),
                 None if conv.bias is None else conv.bias.double(), padding=conv.padding,
                 groups=conv.groups)
    return order.scan(F.silu(y), backend='torch')


# (B, H, W, C, k, directions)
CASES = [
    (2, 56, 56, 96, 3, ATROUS_DIRECTIONS),  # EfficientVMamba-T stage 1 (two vectors at a time)
    (1, 28, 28, 192, 3, ATROUS_DIRECTIONS),
    (2, 7, 5, 20, 3, ATROUS_DIRECTIONS),  # odd sizes: zero tokens; channel tail
    (1, 9, 9, 33, 5, ATROUS_DIRECTIONS),  # a 5 x 5 kernel (taps read from memory)
    (1, 1, 1, 16, 3, ATROUS_DIRECTIONS),  # every tap but the centre outside the map
    (1, 2, 2, 8, 3, CROSS2D_DIRECTIONS),  # all borders; each pixel read by four directions
    (2, 6, 10, 48, 1, CROSS2D_DIRECTIONS),  # 1 x 1 kernel
    (1, 14, 14, 40, 3, LOCALMAMBA_DIRECTIONS[:4] + ('w2',)),
    (1, 3, 4, 5, 3, ('h',)),  # fewer channels than a vector
]


@needs_kernel
@pytest.mark.parametrize('isa', ext.available_isas() if ext is not None else [])
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'x'.join(map(str, c[:5])))
def test_kernel_matches_definition(isa, case):
    batch, height, width, channels, k, directions = case
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, height, width, channels, generator=gen) * 2
    order = get_scan_order(directions, height, width)
    try:
        ext.set_isa(isa)
        for bias in (True, False):
            conv = _conv(channels, k, bias)
            with torch.no_grad():
                out = conv_silu_scan(x, conv, order)
            assert out.is_contiguous() and out.dtype == torch.float32
            assert out.shape == (batch, order.num_directions, channels, order.seq_len)
            torch.testing.assert_close(out.double(), _expected(x, conv, order), rtol=1e-5,
                                       atol=2e-6)
    finally:
        ext.set_isa('')


@needs_kernel
def test_compiled_pass_runs_and_equals_the_torch_ops(monkeypatch):
    """The compiled pass is what runs in inference; the torch ops give the same values."""
    x = torch.randn(2, 12, 12, 64)
    conv, order = _conv(64), get_scan_order(ATROUS_DIRECTIONS, 12, 12)
    calls = []

    class Spy:
        def dwconv_silu_scan(self, *args):
            calls.append(1)
            return ext.dwconv_silu_scan(*args)

    monkeypatch.setattr(conv_scan, '_extension', Spy)
    with torch.no_grad():
        fused = conv_silu_scan(x, conv, order)
    assert calls == [1]
    monkeypatch.setattr(conv_scan, '_extension', lambda: None)
    with torch.no_grad():
        standard = conv_silu_scan(x, conv, order)
    assert calls == [1]
    torch.testing.assert_close(fused, standard, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_one_and_two_threads_give_identical_results():
    x = torch.randn(4, 30, 30, 96)
    conv, order = _conv(96), get_scan_order(ATROUS_DIRECTIONS, 30, 30)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                results.append(conv_silu_scan(x, conv, order))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def _spy_calls(monkeypatch):
    calls = []
    if ext is not None:
        class Spy:
            def dwconv_silu_scan(self, *args):
                calls.append(1)
                return ext.dwconv_silu_scan(*args)
        monkeypatch.setattr(conv_scan, '_extension', Spy)
    return calls


@pytest.mark.parametrize('variant', ['grad', 'float64', 'strided_conv', 'dilated', 'grouped',
                                     'even_kernel', 'reflect_padding', 'not_channel_last'])
def test_other_cases_take_the_torch_ops(variant, monkeypatch):
    """Gradients, other dtypes, convolutions the pass does not compute and maps that are not
    channel-last run the torch ops, with their values (and gradients)."""
    calls = _spy_calls(monkeypatch)
    x = torch.randn(2, 8, 8, 16)
    conv = _conv(16)
    if variant == 'strided_conv':
        conv.stride = (2, 2)
    elif variant == 'dilated':
        conv.dilation, conv.padding = (2, 2), (2, 2)
    elif variant == 'grouped':
        conv = nn.Conv2d(16, 16, 3, padding=1, groups=4)
    elif variant == 'even_kernel':
        conv = nn.Conv2d(16, 16, 2, padding='same', groups=16)
    elif variant == 'reflect_padding':
        conv.padding_mode = 'reflect'
    elif variant == 'float64':
        x, conv = x.double(), conv.double()
    elif variant == 'not_channel_last':
        x = torch.randn(2, 16, 8, 8).permute(0, 2, 3, 1)  # channels-first storage
    if variant in ('strided_conv', 'dilated', 'grouped', 'even_kernel', 'reflect_padding'):
        assert not fusable(conv, 16)
    y = F.silu(conv(x.permute(0, 3, 1, 2)))
    order = get_scan_order(ATROUS_DIRECTIONS, *y.shape[-2:]) if variant == 'strided_conv' else \
        get_scan_order(ATROUS_DIRECTIONS, 8, 8)
    if variant == 'strided_conv':
        with pytest.raises(ValueError, match='does not fit'):
            conv_silu_scan(x, conv, order)
        order = get_scan_order(ATROUS_DIRECTIONS, 8, 8)
        y = None
    if variant == 'grad':
        x.requires_grad_(True)
        out = conv_silu_scan(x, conv, order)
        out.square().sum().backward()
        assert x.grad is not None and conv.weight.grad is not None
    else:
        with torch.no_grad():
            out = conv_silu_scan(x, conv, order) if y is not None else None
        if out is not None:
            torch.testing.assert_close(out, order.scan(y, backend='torch'))
    assert calls == []


def test_bad_input_is_refused_with_a_message():
    conv, order = _conv(16), get_scan_order(ATROUS_DIRECTIONS, 8, 8)
    with pytest.raises(ValueError, match=r'channel-last map \(B, H, W, C\)'):
        conv_silu_scan(torch.randn(16, 8, 8), conv, order)
    with pytest.raises(ValueError, match='get_scan_order'):
        conv_silu_scan(torch.randn(1, 8, 6, 16), conv, order)


@needs_kernel
def test_extension_checks_its_arguments():
    x, conv = torch.randn(1, 4, 4, 8), _conv(8)
    index = torch.arange(16).view(1, 16)
    with pytest.raises(RuntimeError, match='outside'):
        ext.dwconv_silu_scan(x, conv.weight, conv.bias, index + 1)
    with pytest.raises(RuntimeError, match='depthwise'):
        ext.dwconv_silu_scan(x, torch.randn(8, 2, 3, 3), conv.bias, index)
    with pytest.raises(RuntimeError, match='channel-last'):
        ext.dwconv_silu_scan(torch.randn(1, 8, 4, 4).permute(0, 2, 3, 1), conv.weight,
                             conv.bias, index)
    with pytest.raises(RuntimeError, match='int64'):
        ext.dwconv_silu_scan(x, conv.weight, conv.bias, index.int())
    with pytest.raises(RuntimeError, match='bias'):
        ext.dwconv_silu_scan(x, conv.weight, torch.randn(4), index)


def test_a_build_without_the_pass_runs_the_torch_ops(monkeypatch):
    """An extension built before the pass existed (or none at all) means the torch ops."""
    from vssm_mm.ops.selective_scan import cpu_backend

    class OldBuild:
        pass

    monkeypatch.setattr(cpu_backend, 'extension', lambda: OldBuild())
    assert conv_scan._extension() is None
    x, conv = torch.randn(1, 6, 6, 8), _conv(8)
    order = get_scan_order(ATROUS_DIRECTIONS, 6, 6)
    with torch.no_grad():
        out = conv_silu_scan(x, conv, order)
    torch.testing.assert_close(out.double(), _expected(x, conv, order), rtol=1e-5, atol=2e-6)

    def not_built():
        raise ImportError('vssm_mm._C_cpu')

    monkeypatch.setattr(cpu_backend, 'extension', not_built)
    assert conv_scan._extension() is None
