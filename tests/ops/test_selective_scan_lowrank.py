"""The cpu backend's forward with delta in low rank (``selective_scan_fwd_lowrank``), which
the SSM layers use in float32 CPU inference: delta = dt_proj @ delta_low per direction is
computed inside the kernels instead of being written as a (B, dim, L) tensor.

It is compared with the kernels' own forward on the full delta (itself tested against the
reference in test_selective_scan_cpu.py) on every instruction set (the AVX-512 lane kernels,
the AVX2 row kernels at N a multiple of 8, the portable build), at ranks 1 to 48, with lanes of
one vector in one direction and straddling two (B/C shared by the directions), chunk tails,
strided delta_low (a slice of the projections' output), with and without z, D, bias and
softplus; also identical results with 1 and 2 threads, the SSM layer's use of it (and the cases
that must not use it), and the error messages.
"""
import pytest
import torch

from vssm_mm.models.layers import ssm as ssm_module
from vssm_mm.models.layers.ssm import SelectiveSSM
from vssm_mm.ops.selective_scan.cpu_backend import extension_with

ext = extension_with('selective_scan_fwd_lowrank')
pytestmark = pytest.mark.skipif(ext is None, reason='vssm_mm._C_cpu is not built')


def _inputs(batch, k, d, rank, n, length, groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dim = k * d
    # One projection output per direction, as SelectiveSSM makes it: (delta_low, B, C) rows.
    x_dbl = torch.randn(batch, k, rank + 2 * n, length, generator=gen)
    low = x_dbl[:, :, :rank]  # strided view
    bc = torch.randn(batch, groups, 2 * n, length, generator=gen)
    B, C = bc[:, :, :n].contiguous(), bc[:, :, n:].contiguous()
    proj = torch.randn(k, d, rank, generator=gen) / rank ** 0.5
    u = torch.randn(batch, dim, length, generator=gen)
    A = -torch.rand(dim, n, generator=gen) * 3 - 0.1
    D = torch.randn(dim, generator=gen)
    bias = torch.randn(dim, generator=gen) * 0.5 - 1
    z = torch.randn(batch, dim, length, generator=gen)
    return u, low, proj, A, B, C, D, z, bias


def _full(u, low, proj, A, B, C, D, z, bias, softplus):
    batch, dim, length = u.shape
    delta = torch.matmul(proj, low).reshape(batch, dim, length)
    return ext.selective_scan_fwd(u, delta, A, B, C, D, z, bias, softplus, False)[0]


# (batch, K, d, rank, N, L, B/C groups)
CASES = [
    (2, 4, 96, 3, 16, 200, 4),  # EfficientVMamba-T stage 1 (d a multiple of every width)
    (1, 4, 20, 2, 16, 70, 1),  # shared B/C: vectors of channels straddle two directions
    (2, 2, 8, 5, 1, 130, 2),  # N = 1
    (1, 3, 24, 3, 4, 1, 3),  # one token
    (1, 1, 16, 48, 16, 65, 1),  # rank 48, a chunk and one token
    (2, 2, 12, 1, 8, 64, 1),  # rank 1, N = 8 (AVX2 row kernels), a channel tail
    (1, 3, 12, 2, 4, 40, 1),  # N = 4: the AVX2 lane kernels, vectors straddling directions
]


@pytest.mark.parametrize('isa', ext.available_isas() if ext is not None else [])
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'x'.join(map(str, c)))
def test_equals_the_forward_on_the_full_delta(isa, case):
    u, low, proj, A, B, C, D, z, bias = _inputs(*case)
    try:
        ext.set_isa(isa)
        # Without softplus, positive deltas (a negative one makes the state grow).
        for gate, skip, delta_bias, softplus in ((z, D, bias, True), (None, None, None, False),
                                                 (None, D, bias, True), (z, None, None, True)):
            lo, pr = (low, proj) if softplus else (low.abs(), proj.abs())
            out = ext.selective_scan_fwd_lowrank(u, lo, pr, A, B, C, skip, gate, delta_bias,
                                                 softplus)
            expected = _full(u, lo, pr, A, B, C, skip, gate, delta_bias, softplus)
            assert out.shape == u.shape and out.dtype == torch.float32
            # delta's sums run in another order than the product's: float32 rounding, carried
            # through the recurrence.
            torch.testing.assert_close(out, expected, rtol=1e-4,
                                       atol=1e-5 * expected.abs().max().item())
    finally:
        ext.set_isa('')


def test_one_and_two_threads_give_identical_results():
    args = _inputs(4, 4, 48, 3, 16, 300, 4)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(ext.selective_scan_fwd_lowrank(*args, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_arguments_are_checked():
    u, low, proj, A, B, C, D, z, bias = _inputs(1, 2, 16, 3, 16, 20, 2)
    with pytest.raises(RuntimeError, match='float32'):
        ext.selective_scan_fwd_lowrank(u.double(), low, proj, A, B, C, D, z, bias, True)
    with pytest.raises(RuntimeError, match='delta_low must be'):
        ext.selective_scan_fwd_lowrank(u, low[..., :10], proj, A, B, C, D, z, bias, True)
    with pytest.raises(RuntimeError, match='contiguous tokens'):
        ext.selective_scan_fwd_lowrank(u, low.transpose(2, 3).contiguous().transpose(2, 3), proj,
                                       A, B, C, D, z, bias, True)
    with pytest.raises(RuntimeError, match='delta_proj must be'):
        ext.selective_scan_fwd_lowrank(u, low, proj[:, :, :2], A, B, C, D, z, bias, True)


def _ssm(k=4, d=32, n=16):
    torch.manual_seed(0)
    layer = SelectiveSSM(k, d, n, dt_rank=3)
    with torch.no_grad():
        layer.A_log.add_(torch.rand_like(layer.A_log))  # A away from -(1..N)
        layer.D.normal_()
    return layer


def _count_calls(monkeypatch):
    calls = []

    class Spy:
        def __getattr__(self, name):
            if name != 'selective_scan_fwd_lowrank':
                return getattr(ext, name)
            return lambda *args: calls.append(name) or ext.selective_scan_fwd_lowrank(*args)

    monkeypatch.setattr(ssm_module, 'extension_with', lambda name: Spy())
    return calls


def test_the_ssm_layer_uses_it_in_inference_with_the_same_values(monkeypatch):
    layer, xs, z = _ssm(), torch.randn(2, 4, 32, 100), torch.randn(2, 128, 100)
    calls = _count_calls(monkeypatch)
    with torch.no_grad():
        fast = layer(xs, z)
    assert calls == ['selective_scan_fwd_lowrank']
    monkeypatch.setattr(ssm_module, '_lowrank_kernel', lambda *tensors: None)
    with torch.no_grad():
        standard = layer(xs, z)
    torch.testing.assert_close(fast, standard, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('case', ['grad', 'reference_backend', 'autocast', 'float64'])
def test_the_ssm_layer_keeps_the_standard_path(case, monkeypatch):
    """Training, another backend, autocast and float64 run the standard path."""
    layer, xs = _ssm(), torch.randn(2, 4, 32, 50)
    calls = _count_calls(monkeypatch)
    if case == 'grad':
        layer(xs.requires_grad_(True)).sum().backward()
        assert xs.grad is not None
    elif case == 'reference_backend':
        monkeypatch.setenv('VSSM_SCAN_BACKEND', 'reference')
        with torch.no_grad():
            layer(xs)
    elif case == 'autocast':
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            assert layer(xs).dtype == torch.float32
    else:
        with torch.no_grad():
            assert layer.double()(xs.double()).dtype == torch.float64
    assert calls == []
