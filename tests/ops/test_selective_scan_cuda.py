"""The 'cuda' backend (the csrc/ extension) vs the reference backend.

These tests need a GPU and the extension built
(``FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 pip install -e . --no-build-isolation``);
elsewhere they skip (with VSSM_REQUIRE_GPU=1, as tools/gpu_check.py runs them, a skip is a
failure). The compile-and-link check without a GPU is ``tools/check_cuda_build.py`` (run by
``make test``); the adapter's dtype handling is checked on the CPU against a stand-in for the
extension. Tolerances: ``gpu_scan_tolerance`` in tests/vssm_testing.py says why they are what
they are (fast math, summation order).
"""
import importlib
import os.path as osp

import pytest
import torch
from ops.test_selective_scan import assert_close, make_inputs, run
from vssm_testing import gpu_scan_tolerance

from vssm_mm.ops.selective_scan import cuda_backend, selective_scan
from vssm_mm.ops.selective_scan.backends import unavailable_reason

ON_GPU = torch.cuda.is_available()
REASON = unavailable_reason('cuda', 'cuda') if ON_GPU else 'needs a CUDA GPU'
needs_extension = pytest.mark.skipif(REASON is not None, reason=f'{REASON}')
pytestmark = pytest.mark.gpu


def compare_with_reference(tol=None, **shape):
    """Values (output, last state) and every input gradient, last-state gradient off
    (the kernels do not take one)."""
    inputs = {k: v.detach().cuda().requires_grad_() if v is not None else None
              for k, v in make_inputs(**shape).items()}
    gen = torch.Generator().manual_seed(1)
    out_dtype = inputs['u'].dtype
    out_grad = torch.randn(inputs['u'].shape, generator=gen).to(out_dtype).cuda()
    expected, _, _ = run(selective_scan, inputs, out_grad, None, backend='reference')
    actual, _, _ = run(selective_scan, inputs, out_grad, None, backend='cuda')
    dtype = shape.get('dtype', torch.float32)
    tol = tol or gpu_scan_tolerance(dtype, shape.get('length', 37))
    assert_close(actual, expected, tol, context=str(shape))


LENGTHS = [1, 49, 1023, 2048, 4097, 66800]


@needs_extension
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('d_state', [1, 16])
@pytest.mark.parametrize('length', LENGTHS)
@pytest.mark.parametrize('groups', [1, 4])
@pytest.mark.parametrize('with_z', [False, True])
def test_cuda_matches_reference(dtype, d_state, length, groups, with_z):
    batch, channels = (1, 8) if length > 10000 else (2, 16)
    compare_with_reference(batch=batch, channels=channels, length=length, d_state=d_state,
                           groups=groups, dtype=dtype, with_z=with_z)


@needs_extension
@pytest.mark.parametrize('delta_ratio,d_state,length', [(2, 16, 300), (4, 1, 3136),
                                                        (2, 64, 777)])
def test_cuda_delta_groups_and_large_n(delta_ratio, d_state, length):
    compare_with_reference(batch=2, channels=16, length=length, d_state=d_state, groups=2,
                           delta_ratio=delta_ratio)


@needs_extension
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cuda_out_float32(dtype):
    inputs = {k: v.detach().cuda().requires_grad_() if v is not None else None
              for k, v in make_inputs(dtype=dtype, length=3000, channels=16).items()}
    args = [inputs[k] for k in 'u delta A B C'.split()]
    outs = {}
    for backend in ('reference', 'cuda'):
        out = selective_scan(*args, D=inputs['D'], z=inputs['z'], delta_bias=inputs['delta_bias'],
                             delta_softplus=True, out_float32=True, backend=backend)
        assert out.dtype == torch.float32
        grads = torch.autograd.grad(out.square().sum(), args)
        outs[backend] = (out, grads)
    # fp32 outputs of 16-bit inputs: only the fast-math fp32 error (both compute in fp32)
    scale = outs['reference'][0].abs().max()
    assert (outs['cuda'][0] - outs['reference'][0]).abs().max() <= \
        gpu_scan_tolerance(torch.float32, 3000) * scale
    for g_cuda, g_ref in zip(outs['cuda'][1], outs['reference'][1]):
        scale = g_ref.float().abs().max()
        assert (g_cuda.float() - g_ref.float()).abs().max() <= \
            gpu_scan_tolerance(g_ref.dtype, 3000) * scale


@needs_extension
def test_cuda_mixed_input_dtypes():
    """B/C/delta in other dtypes than u are cast by the adapter; gradients come back in the
    inputs' own dtypes."""
    inputs = {k: v.detach().cuda() for k, v in make_inputs(length=200).items()}
    u = inputs['u'].to(torch.bfloat16).requires_grad_()
    B = inputs['B'].requires_grad_()  # fp32
    out = selective_scan(u, inputs['delta'].half(), inputs['A'], B, inputs['C'],
                         D=inputs['D'], delta_softplus=True, backend='cuda')
    du, dB = torch.autograd.grad(out.float().sum(), [u, B])
    assert du.dtype == torch.bfloat16 and dB.dtype == torch.float32
    B_ref = B.detach().clone().requires_grad_()
    ref = selective_scan(u, inputs['delta'].half(), inputs['A'], B_ref, inputs['C'],
                         D=inputs['D'], delta_softplus=True, backend='reference')
    (dB_ref, ) = torch.autograd.grad(ref.float().sum(), [B_ref])
    # fp32 B gets an fp32 gradient, not one rounded to bf16 (~4e-3 relative)
    assert (dB - dB_ref).abs().max() <= gpu_scan_tolerance(torch.float32) * dB_ref.abs().max()


@needs_extension
def test_cuda_refuses_last_state_gradient_and_fp64():
    inputs = {k: v.detach().cuda().requires_grad_() for k, v in make_inputs(length=20).items()}
    _, last = selective_scan(inputs['u'], inputs['delta'], inputs['A'], inputs['B'],
                             inputs['C'], return_last_state=True, backend='cuda')
    with pytest.raises(NotImplementedError, match='last state'):
        last.sum().backward()
    with pytest.raises(TypeError, match='reference'):
        selective_scan(*(inputs[k].detach().double() for k in 'u delta'.split()),
                       inputs['A'].detach().double(),
                       *(inputs[k].detach().double() for k in 'B C'.split()), backend='cuda')


@needs_extension
def test_cuda_chunk_plan_matches_python():
    ext = importlib.import_module('vssm_mm._C')
    for length in (1, 128, 129, 512, 513, 3136, 66800):
        assert ext.chunk_length(length) == cuda_backend.chunk_length(length)
    inputs = {k: v.detach().cuda() for k, v in make_inputs(length=3000).items()}
    states = cuda_backend.forward(inputs['u'], inputs['delta'], inputs['A'], inputs['B'],
                                  inputs['C'], None, None, None, True, False)[2][0]
    assert states.shape[2] == cuda_backend.num_chunks(3000) == 2


@needs_extension
def test_cuda_backend_is_auto_on_gpu_and_compiles(monkeypatch):
    monkeypatch.delenv('VSSM_SCAN_BACKEND', raising=False)
    from vssm_mm.ops.selective_scan import resolve_backend
    assert resolve_backend(None, 'cuda') == 'cuda'
    inputs = {k: v.detach().cuda().requires_grad_() if v is not None else None
              for k, v in make_inputs(length=300, channels=16).items()}
    args = [inputs[k] for k in 'u delta A B C'.split()]

    def f(*xs):
        return selective_scan(*xs, D=inputs['D'], z=inputs['z'], delta_bias=inputs['delta_bias'],
                              delta_softplus=True)

    eager = f(*args)
    compiled = torch.compile(f, fullgraph=True)(*args)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-5)
    g_eager = torch.autograd.grad(eager.sum(), args)
    g_compiled = torch.autograd.grad(compiled.sum(), args)
    for a, b in zip(g_compiled, g_eager):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_chunk_plan_of_the_adapter():
    """Runs everywhere: the Python mirror of scan_chunk_length() in csrc/."""
    header = open(osp.join(osp.dirname(__file__), '..', '..', 'csrc', 'selective_scan',
                           'selective_scan.h')).read()
    assert 'if (length <= 128) return 128;' in header
    assert 'if (length <= 512) return 512;' in header and 'return 2048;' in header
    assert [cuda_backend.chunk_length(n) for n in (1, 128, 129, 512, 513, 66800)] == \
        [128, 128, 512, 512, 2048, 2048]
    assert cuda_backend.num_chunks(66800) == 33


def test_custom_op_fake_shapes_for_the_cuda_backend():
    """Runs everywhere: torch.compile traces the 'cuda' backend through the op's fake
    implementation, whose saved-state shape must be what the kernels return."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vssm_mm.ops.selective_scan.library import selective_scan_op
    with FakeTensorMode():
        u = torch.empty(2, 16, 3000, dtype=torch.bfloat16)
        B = torch.empty(2, 4, 16, 3000, dtype=torch.bfloat16)
        out, last, saved = selective_scan_op(u, u, torch.empty(16, 16), B, B, None, None, None,
                                             True, True, 'cuda')
    assert out.shape == u.shape and out.dtype == torch.float32
    assert last.shape == (2, 16, 16)
    assert saved.shape == (2, 16, cuda_backend.num_chunks(3000), 16)
    assert saved.dtype == torch.float32


BLOCK_BACKENDS = ['triton', 'cuda']


@pytest.mark.parametrize('backend', BLOCK_BACKENDS)
def test_backbone_block_compiles_with_each_backend(backend, monkeypatch):
    """torch.compile of a real backbone block (MSVMamba-Nano's first block: multi-scale scans,
    N = 1) with the scan on ``backend``, against the eager block on the reference backend."""
    reason = 'needs a CUDA GPU' if not ON_GPU else unavailable_reason(backend, 'cuda')
    if reason:
        pytest.skip(reason)
    pytest.importorskip('mmengine', reason='the backbones need mmengine')
    from vssm_mm.models.backbones import MSVMamba
    # TF32 convolutions would differ between cuDNN's eager and compiled algorithm choices
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    torch.manual_seed(0)
    backbone = MSVMamba(arch='nano').cuda().eval()
    blocks = [m for m in backbone.modules() if type(m).__name__.endswith('Block')]
    block, captured = blocks[0], []
    handle = block.register_forward_pre_hook(lambda mod, args: captured.append(args))
    with torch.no_grad():
        monkeypatch.setenv('VSSM_SCAN_BACKEND', 'reference')
        backbone(torch.randn(2, 3, 64, 64, device='cuda'))
    handle.remove()
    x = captured[0][0].detach()
    grad = torch.randn_like(block(x))

    def run_block(fn, name):
        monkeypatch.setenv('VSSM_SCAN_BACKEND', name)
        xi = x.clone().requires_grad_()
        out = fn(xi)
        (dx, ) = torch.autograd.grad(out, [xi], grad)
        return out.detach(), dx

    torch._dynamo.reset()
    expected = run_block(block, 'reference')
    actual = run_block(torch.compile(block), backend)
    for a, b in zip(actual, expected):
        assert (a - b).abs().max() <= gpu_scan_tolerance(torch.float32) * b.abs().max()


class StandInExtension:
    """Plays vssm_mm._C on the CPU: refuses what selective_scan.cpp refuses (mixed dtypes among
    u, delta, B, C, z; non-fp32 A, D, delta_bias), computes with the reference backend in the
    dtype it is given and returns gradients in the kernels' dtypes."""

    def __init__(self):
        self.dtypes = []

    @staticmethod
    def _check(u, delta, A, B, C, D, z, delta_bias):
        for name, t in (('delta', delta), ('B', B), ('C', C), ('z', z)):
            assert t is None or t.dtype == u.dtype, f'{name} must have u dtype {u.dtype}'
        for t in (A, D, delta_bias):
            assert t is None or t.dtype == torch.float32

    def selective_scan_fwd(self, u, delta, A, B, C, D, z, delta_bias, softplus, out_float32):
        self._check(u, delta, A, B, C, D, z, delta_bias)
        self.dtypes.append(u.dtype)
        out, last = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                   delta_softplus=softplus, out_float32=out_float32,
                                   return_last_state=True, backend='reference')
        n_chunks = cuda_backend.num_chunks(u.shape[-1])
        return [out, last.float()[:, :, None].expand(-1, -1, n_chunks, -1).contiguous()]

    def selective_scan_bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, softplus):
        self._check(u, delta, A, B, C, D, z, delta_bias)
        assert dout.dtype in (torch.float32, u.dtype)
        inputs = [t.detach().requires_grad_() if t is not None else None
                  for t in (u, delta, A, B, C, D, z, delta_bias)]
        out = selective_scan(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7],
                             delta_softplus=softplus, out_float32=True, backend='reference')
        present = [t for t in inputs if t is not None]
        grads = iter(torch.autograd.grad(out, present, dout.float()))
        return [next(grads).to(t.dtype) if t is not None else None for t in inputs]


@pytest.mark.parametrize('b_dtype', [torch.float32, torch.bfloat16])
def test_adapter_keeps_fp32_b_c_gradients_unrounded(b_dtype, monkeypatch):
    """Runs everywhere: bf16 u with fp32 B/C runs the kernels in fp32 (their dB/dC are not
    rounded to bf16); all-bf16 inputs stay bf16."""
    stand_in = StandInExtension()
    monkeypatch.setattr(cuda_backend, '_ext', lambda: stand_in)
    inputs = {k: v.detach() if v is not None else None
              for k, v in make_inputs(length=150, d_state=4, groups=2).items()}
    inputs['u'] = inputs['u'].to(torch.bfloat16)
    inputs['z'] = inputs['z'].to(torch.bfloat16)
    inputs['delta'] = inputs['delta'].to(torch.bfloat16)
    inputs['B'] = inputs['B'].to(b_dtype)
    inputs['C'] = inputs['C'].to(b_dtype)
    order = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
    args = [inputs[k] for k in order]
    out, _, saved, _ = cuda_backend.forward(*args, True, False)
    assert out.dtype == torch.bfloat16
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.dtype)
    grads = dict(zip(order, cuda_backend.backward(dout, None, *args, True, saved, None)))
    kernel_dtype = torch.float32 if b_dtype == torch.float32 else torch.bfloat16
    assert stand_in.dtypes == [kernel_dtype]
    expected, _, _ = run(selective_scan, {k: v.clone().requires_grad_() if v is not None
                                          else None for k, v in inputs.items()},
                         dout, None, backend='reference')
    for name in order:
        assert grads[name].dtype == inputs[name].dtype, name
    # fp32 B/C: fp32-accurate gradients (rounding them to bf16 would cost ~4e-3)
    tol = 1e-5 if b_dtype == torch.float32 else 1.6e-2
    for name in ('B', 'C'):
        err = (grads[name].double() - expected[name].double()).abs().max()
        assert err <= tol * expected[name].double().abs().max(), (name, float(err))
    scale = expected['out'].float().abs().max()
    assert (out.float() - expected['out'].float()).abs().max() <= 1.6e-2 * scale
