"""The LayerNorm kernels for CPU inference (vssm_mm/ops/norm_gate.py, csrc/cpu/norm_gate_cpu.cpp).

The compiled kernels run in float32 CPU inference; everywhere else the torch ops run. Both are
compared with the definition in float64, on shapes whose channels and pixels are and are not
multiples of the vector width (the kernels' staged tails), blocks of pixels or tokens (256 per
task) with a partial last one, strided inputs (chunks of a larger map), every instruction set,
with and without the affine parameters and the gate; also the cases that must take the torch
ops, and identical sums with one and two threads.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vssm_mm.ops import norm_gate
from vssm_mm.ops.norm_gate import compiled_inference, layer_norm_mean, norm_gate_channels

ext = norm_gate._extension()
needs_kernel = pytest.mark.skipif(ext is None, reason='vssm_mm._C_cpu is not built')


def _expected(x, norm, z):
    """The definition in float64: layer_norm over C, times silu(z), channels-first."""
    y = F.layer_norm(x.double().transpose(1, 2), norm.normalized_shape,
                     None if norm.weight is None else norm.weight.double(),
                     None if norm.bias is None else norm.bias.double(), norm.eps)
    if z is not None:
        y = y * F.silu(z.double().transpose(1, 2))
    return y.transpose(1, 2)


def _norm(channels, affine=True, seed=0):
    norm = nn.LayerNorm(channels, elementwise_affine=affine, eps=1e-5)
    if affine:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(channels, generator=gen))
            norm.bias.copy_(torch.randn(channels, generator=gen))
    return norm


SHAPES = [(2, 96, 3136), (3, 19, 63), (1, 3, 5), (2, 17, 300), (1, 1, 40), (2, 8, 16), (1, 5, 1)]


@needs_kernel
@pytest.mark.parametrize('isa', ext.available_isas() if ext is not None else [])
@pytest.mark.parametrize('shape', SHAPES)
def test_kernel_matches_definition(isa, shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen) * 3 + 2  # an offset, as real activations have
    z = torch.randn(*shape, generator=gen) * 4
    try:
        ext.set_isa(isa)
        with torch.no_grad():
            z_last = z.transpose(1, 2).contiguous().transpose(1, 2)  # channels contiguous
            for norm, gate in ((_norm(shape[1]), z), (_norm(shape[1], affine=False), None),
                               (_norm(shape[1], seed=2), None), (_norm(shape[1]), z_last)):
                out = norm_gate_channels(x, norm, gate)
                assert out.is_contiguous() and out.dtype == torch.float32
                torch.testing.assert_close(out.double(), _expected(x, norm, gate), rtol=2e-5,
                                           atol=2e-5)
    finally:
        ext.set_isa('')


@needs_kernel
def test_kernel_reads_strided_chunks():
    """x and z as channel chunks of larger maps (batch and channel strides of the parent)."""
    gen = torch.Generator().manual_seed(3)
    big_x, big_z = torch.randn(2, 40, 77, generator=gen), torch.randn(3, 2, 40, 77, generator=gen)
    x, z = big_x[:, 20:], big_z[1, :, :20]
    norm = _norm(20)
    with torch.no_grad():
        out = norm_gate_channels(x, norm, z)
    torch.testing.assert_close(out.double(), _expected(x, norm, z), rtol=2e-5, atol=2e-5)
    # z as a transposed view of a channel-last (B, J, C) map: transposed in blocks by the
    # kernel (256 pixels per block: 300 pixels make a partial second block and a tail).
    for pixels in (77, 300):
        xx = torch.randn(2, 20, pixels, generator=gen)
        z_last = torch.randn(2, pixels, 20, generator=gen).transpose(1, 2)
        with torch.no_grad():
            out = norm_gate_channels(xx, norm, z_last)
        torch.testing.assert_close(out.double(), _expected(xx, norm, z_last), rtol=2e-5,
                                   atol=2e-5)
    # (C, B, J) storage seen as (B, C, J): what a single product over the whole batch gives.
    cbj = torch.randn(20, 2, 77, generator=gen).permute(1, 0, 2)
    with torch.no_grad():
        out = norm_gate_channels(cbj, norm, cbj)
    torch.testing.assert_close(out.double(), _expected(cbj, norm, cbj), rtol=2e-5, atol=2e-5)


@needs_kernel
def test_kernel_is_used_only_where_it_applies():
    x = torch.randn(2, 8, 10)
    norm = _norm(8)
    with torch.no_grad():
        assert compiled_inference(x, norm.weight)
        assert not compiled_inference(x.double())
        assert not compiled_inference(x.half())
        assert not compiled_inference(x.to('meta'))
    assert not compiled_inference(x, norm.weight)  # the weight needs its gradient
    assert compiled_inference(x)  # nothing needs a gradient
    x.requires_grad_(True)
    out = norm_gate_channels(x, norm, x)  # torch ops: gradients flow
    out.sum().backward()
    assert x.grad is not None and norm.weight.grad is not None


def test_torch_ops_match_definition_in_every_dtype():
    """The torch path (also what gradients, GPUs and half dtypes run)."""
    gen = torch.Generator().manual_seed(4)
    x, z = torch.randn(2, 12, 30, generator=gen), torch.randn(2, 12, 30, generator=gen)
    norm = _norm(12).double()
    out = norm_gate_channels(x.double().requires_grad_(True), norm, z.double())
    torch.testing.assert_close(out, _expected(x, norm, z), rtol=1e-12, atol=1e-12)
    out = norm_gate_channels(x.bfloat16(), _norm(12).bfloat16(), z.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_bad_shapes_are_explained():
    norm = _norm(8)
    with pytest.raises(ValueError, match='LayerNorm over C'):
        norm_gate_channels(torch.randn(2, 9, 5), norm)
    with pytest.raises(ValueError, match='LayerNorm over C'):
        norm_gate_channels(torch.randn(2, 8), norm)
    with pytest.raises(ValueError, match='z must have the shape of x'):
        norm_gate_channels(torch.randn(2, 8, 5), norm, torch.randn(2, 5, 8))


# ------------------------------------------------------------------------------------------------
# layer_norm_mean: the channel attentions' mean normalised token


@needs_kernel
@pytest.mark.parametrize('isa', ext.available_isas() if ext is not None else [])
@pytest.mark.parametrize('shape', [(8, 3136, 48), (2, 300, 19), (1, 1, 3), (3, 513, 96),
                                   (2, 257, 16)])
def test_layer_norm_mean_matches_definition(isa, shape):
    """Token counts below, at and above the 256-token task (partial last task), channels
    with and without a tail."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=gen) * 3 + 2
    try:
        ext.set_isa(isa)
        with torch.no_grad():
            for norm in (_norm(shape[2]), _norm(shape[2], affine=False)):
                out = layer_norm_mean(x, norm)
                expected = F.layer_norm(
                    x.double(), norm.normalized_shape,
                    None if norm.weight is None else norm.weight.double(),
                    None if norm.bias is None else norm.bias.double(), norm.eps).mean(1)
                assert out.shape == shape[::2] and out.dtype == torch.float32
                torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    finally:
        ext.set_isa('')


@needs_kernel
def test_layer_norm_mean_threads_and_strides():
    """One and two threads give identical sums; token-strided input (a slice) is read in place
    and a channel-strided one is copied first, with the same result."""
    gen = torch.Generator().manual_seed(6)
    big = torch.randn(4, 1000, 24, generator=gen)
    norm = _norm(24)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = layer_norm_mean(big, norm)
            torch.set_num_threads(2)
            two = layer_norm_mean(big, norm)
            assert torch.equal(one, two)
            torch.testing.assert_close(layer_norm_mean(big[1:3, 10:500], norm),
                                       norm(big[1:3, 10:500]).mean(1), rtol=1e-5, atol=1e-5)
            chan = big.transpose(1, 2).contiguous().transpose(1, 2)
            assert torch.equal(layer_norm_mean(chan, norm), one)
    finally:
        torch.set_num_threads(threads)


def test_channel_attention_gate_equals_its_definition():
    """TokenChannelAttention with the compiled summary (no_grad) and with torch's ops."""
    from vssm_mm.models.layers import TokenChannelAttention
    torch.manual_seed(0)
    attn = TokenChannelAttention(32).eval()
    for module in (attn.norm, attn.reduce, attn.expand):
        for p in module.parameters():
            torch.nn.init.normal_(p)
    x = torch.randn(2, 7, 9, 32)
    with torch.no_grad():
        fast = attn(x)
    expected = x * torch.sigmoid(attn.expand(F.gelu(attn.reduce(
        attn.norm(x).mean(dim=(1, 2), keepdim=True)))))
    torch.testing.assert_close(fast, expected.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='T > 0'):
        layer_norm_mean(torch.randn(2, 0, 32), attn.norm)


def test_cpu_inference_excludes_autocast_gradients_and_other_dtypes():
    """The CPU inference paths run for float32 CPU tensors without gradients, outside CPU
    autocast (which decides the dtypes of the standard ops itself)."""
    from vssm_mm.ops.norm_gate import cpu_inference
    x, w = torch.zeros(2, 3), torch.zeros(3, requires_grad=True)
    with torch.no_grad():
        assert cpu_inference(x, w)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not cpu_inference(x, w)
        assert not cpu_inference(x.double(), w)
    assert not cpu_inference(x, w)  # w needs a gradient
    assert cpu_inference(x, w.detach())
