"""Tests of the selective-scan reference backend, dispatch and FLOP handle."""
import numpy as np
import pytest
import torch

from vssm_mm.ops.selective_scan import (SCAN_FLOP_HANDLES, available_backends,
                                        resolve_backend, selective_scan,
                                        selective_scan_flop_jit,
                                        selective_scan_naive)
from vssm_mm.ops.selective_scan import blocked_scan

# max|a - b| / max|b| allowed per dtype: the two implementations share the
# fp32 math, so they differ by fp32 rounding plus the final cast.
REL_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2,
           torch.float64: 1e-12}
GRAD_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def make_inputs(batch=2, channels=8, length=37, d_state=4, groups=2,
                delta_ratio=1, dtype=torch.float32, with_z=True, seed=0):
    """Inputs in the value ranges of a VMamba layer (softplus(dt) ~ 0.02-1)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors = dict(
        u=randn(batch, channels, length).to(dtype),
        delta=randn(batch, channels // delta_ratio, length,
                    scale=0.5).to(dtype),
        A=-torch.rand(channels, d_state, generator=gen).mul(4).add(0.1).to(
            wdtype),
        B=randn(batch, groups, d_state, length).to(dtype),
        C=randn(batch, groups, d_state, length).to(dtype),
        D=randn(channels).to(wdtype),
        z=randn(batch, channels, length).to(dtype) if with_z else None,
        delta_bias=randn(channels // delta_ratio, scale=0.5,
                         shift=-1.0).to(wdtype),
    )
    return {k: v.requires_grad_() if v is not None else None
            for k, v in tensors.items()}


def run(fn, inputs, out_grad=None, last_grad=None, **kwargs):
    """Output, last state and the gradients of every tensor input."""
    kwargs.setdefault('delta_softplus', True)
    out, last = fn(inputs['u'], inputs['delta'], inputs['A'], inputs['B'],
                   inputs['C'], D=inputs['D'], z=inputs['z'],
                   delta_bias=inputs['delta_bias'], return_last_state=True,
                   **kwargs)
    if out_grad is None:
        gen = torch.Generator().manual_seed(1)
        out_grad = torch.randn(out.shape, generator=gen).to(out.dtype)
        last_grad = torch.randn(last.shape, generator=gen).to(last.dtype)
    names = [n for n in GRAD_NAMES if inputs[n] is not None]
    loss = (out.double() * out_grad.double()).sum()
    if last_grad is not None:
        loss = loss + (last.double() * last_grad.double()).sum()
    grads = torch.autograd.grad(loss, [inputs[n] for n in names])
    result = dict(out=out, last=last, **dict(zip(names, grads)))
    return result, out_grad, last_grad


def assert_close(actual, expected, tol, context=''):
    for name, exp in expected.items():
        act = actual[name]
        assert act.dtype == exp.dtype and act.shape == exp.shape, (
            name, act.dtype, exp.dtype, act.shape, exp.shape)
        scale = exp.double().abs().max().item() + 1e-6
        err = (act.double() - exp.double()).abs().max().item() / scale
        assert err <= tol, f'{context} {name}: relative error {err:.3g} > {tol}'


def compare_with_naive(chunk_elements=None, monkeypatch=None,
                       out_float32=False, **shape):
    if chunk_elements is not None:
        monkeypatch.setattr(blocked_scan, 'DEFAULT_CHUNK_ELEMENTS',
                            chunk_elements)
    inputs = make_inputs(**shape)
    expected, out_grad, last_grad = run(selective_scan_naive, inputs,
                                        out_float32=out_float32)
    actual, _, _ = run(selective_scan, inputs, out_grad, last_grad,
                       out_float32=out_float32, backend='reference')
    dtype = shape.get('dtype', torch.float32)
    assert actual['out'].dtype == (torch.float32 if out_float32 else dtype)
    assert_close(actual, expected, REL_TOL[dtype], context=str(shape))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16,
                                   torch.bfloat16])
@pytest.mark.parametrize('groups', [1, 4])
@pytest.mark.parametrize('with_z', [False, True])
@pytest.mark.parametrize('d_state', [1, 16])
def test_reference_matches_naive(dtype, groups, with_z, d_state, monkeypatch):
    # A small chunk budget forces several chunks (and a padded last one).
    compare_with_naive(chunk_elements=512, monkeypatch=monkeypatch,
                       dtype=dtype, groups=groups, with_z=with_z,
                       d_state=d_state, length=37)


@pytest.mark.parametrize('length', [1, 2, 37])
@pytest.mark.parametrize('delta_ratio', [2, 4])
def test_reference_delta_groups(length, delta_ratio):
    compare_with_naive(length=length, delta_ratio=delta_ratio, groups=2)


def test_reference_non_contiguous_inputs():
    """Channel-last activations passed as transposed views."""
    inputs = make_inputs(length=23)
    views = {k: v.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
             .requires_grad_() if k in ('u', 'delta', 'z', 'B', 'C') else v
             for k, v in inputs.items()}
    assert not views['u'].is_contiguous()
    expected, out_grad, last_grad = run(selective_scan_naive, inputs)
    actual, _, _ = run(selective_scan, views, out_grad, last_grad,
                       backend='reference')
    assert_close(actual, expected, REL_TOL[torch.float32])


def test_reference_large_state():
    compare_with_naive(d_state=64, groups=2, length=20)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reference_out_float32(dtype):
    compare_with_naive(dtype=dtype, out_float32=True)


@pytest.mark.parametrize('d_state,chunk_elements', [(1, None), (16, 4096)])
def test_reference_long_sequence(d_state, chunk_elements, monkeypatch):
    compare_with_naive(chunk_elements=chunk_elements, monkeypatch=monkeypatch,
                       batch=1, channels=4, groups=2, d_state=d_state,
                       length=3000)


def test_reference_without_optional_inputs():
    inputs = make_inputs(with_z=False)
    u, delta, A, B, C = (inputs[k] for k in 'u delta A B C'.split())
    # 3-D B/C mean one group; no D, no bias, no softplus.
    B3, C3 = B[:, 0].detach().requires_grad_(), C[:, 0].detach()
    out = selective_scan(u, delta.abs(), A, B3, C3, backend='reference')
    expected = selective_scan_naive(u, delta.abs(), A, B3, C3)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    (grad_B, ) = torch.autograd.grad(out.sum(), [B3])
    (grad_B_ref, ) = torch.autograd.grad(expected.sum(), [B3])
    assert grad_B.shape == B3.shape
    assert torch.allclose(grad_B, grad_B_ref, rtol=1e-5, atol=1e-5)


def test_reference_very_long_sequence():
    """L = 70,000 (COCO stage 1), checked against a float64 numpy loop."""
    batch, channels, length = 1, 2, 70_000
    inputs = make_inputs(batch=batch, channels=channels, length=length,
                         d_state=1, groups=1, with_z=False)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    out, last = selective_scan(args['u'], args['delta'], args['A'], args['B'],
                               args['C'], D=args['D'],
                               delta_bias=args['delta_bias'],
                               delta_softplus=True, return_last_state=True,
                               backend='reference')
    np64 = {k: v.double().numpy() for k, v in args.items()}
    dt = np.logaddexp(0, np64['delta'] + np64['delta_bias'][:, None])[0]
    decay = np.exp(dt * np64['A'][:, :1])
    drive = dt * np64['u'][0] * np64['B'][0, 0, 0]
    h = np.zeros(channels)
    ys = np.empty((channels, length))
    for t in range(length):
        h = decay[:, t] * h + drive[:, t]
        ys[:, t] = h
    expected = ys * np64['C'][0, 0, 0] + np64['D'][:, None] * np64['u'][0]
    err = np.abs(out[0].double().numpy() - expected).max()
    assert err < 1e-4 * np.abs(expected).max(), err
    assert np.allclose(last[0, :, 0].numpy(), h, rtol=1e-4, atol=1e-5)


def test_reference_gradcheck_float64(monkeypatch):
    # Tiny chunks so that the carries between chunks are differentiated too.
    monkeypatch.setattr(blocked_scan, 'DEFAULT_CHUNK_ELEMENTS', 24)
    inputs = make_inputs(batch=1, channels=4, length=7, d_state=3, groups=2,
                         delta_ratio=2, dtype=torch.float64)
    names = list(GRAD_NAMES)

    def fn(*tensors):
        kw = dict(zip(names, tensors))
        out, last = selective_scan(kw['u'], kw['delta'], kw['A'], kw['B'],
                                   kw['C'], D=kw['D'], z=kw['z'],
                                   delta_bias=kw['delta_bias'],
                                   delta_softplus=True, return_last_state=True,
                                   backend='reference')
        return out, last

    assert torch.autograd.gradcheck(fn, [inputs[n] for n in names],
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reference_gradient_dtypes():
    inputs = make_inputs(dtype=torch.bfloat16)
    result, _, _ = run(selective_scan, inputs, backend='reference')
    for name in GRAD_NAMES:
        assert result[name].dtype == inputs[name].dtype, name


def test_reference_saves_no_per_token_states():
    """Saved for backward: the inputs plus (B, D, n_chunks, N) states only."""
    inputs = make_inputs(batch=2, channels=8, length=3000, d_state=16,
                         with_z=False)
    given = [v for v in inputs.values() if v is not None]
    out = selective_scan(inputs['u'], inputs['delta'], inputs['A'],
                         inputs['B'], inputs['C'], D=inputs['D'],
                         delta_bias=inputs['delta_bias'], backend='reference')
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    extra = sum(t.numel() for t in saved) - sum(v.numel() for v in given)
    per_token_states = 2 * 8 * 3000 * 16
    assert 0 < extra < per_token_states // 20, extra


def test_input_validation_messages():
    inputs = {k: v.detach() for k, v in make_inputs().items()
              if v is not None}
    with pytest.raises(ValueError, match='A must be'):
        selective_scan(inputs['u'], inputs['delta'], inputs['A'][:3],
                       inputs['B'], inputs['C'])
    with pytest.raises(ValueError, match='delta must be'):
        selective_scan(inputs['u'], inputs['delta'][:, :3], inputs['A'],
                       inputs['B'], inputs['C'])
    with pytest.raises(ValueError, match='B must be'):
        selective_scan(inputs['u'], inputs['delta'], inputs['A'],
                       inputs['B'][:, :, :2], inputs['C'])


def test_torch_compile_uses_library_op():
    """Under torch.compile the op is one opaque custom op (fullgraph)."""
    from vssm_mm.ops.selective_scan.library import selective_scan_op
    inputs = make_inputs(length=37)
    args = [inputs[n] for n in GRAD_NAMES]

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z,
                              delta_bias=delta_bias, delta_softplus=True,
                              return_last_state=True, backend='reference')

    compiled = torch.compile(fn, fullgraph=True, backend='aot_eager')
    out, last = compiled(*args)
    expected, expected_last = fn(*args)
    assert torch.allclose(out, expected) and torch.allclose(last,
                                                            expected_last)
    grads = torch.autograd.grad(out.sum() + last.sum(), args)
    expected_grads = torch.autograd.grad(
        expected.sum() + expected_last.sum(), args)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-6)
    # Fake (meta) and real implementations agree, autograd registered.
    torch.library.opcheck(selective_scan_op,
                          tuple(args) + (True, False, 'reference'))


# ---------------------------------------------------------------------------
# Backend selection
# ---------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv('VSSM_SCAN_BACKEND', raising=False)
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    return monkeypatch


def _cpu_kernels_built():
    try:
        import vssm_mm._C_cpu  # noqa: F401
    except ImportError:
        return False
    return True


def test_auto_picks_cpu_kernels_on_cpu(clean_env):
    expected = 'cpu' if _cpu_kernels_built() else 'reference'
    assert resolve_backend(None, 'cpu') == expected
    assert resolve_backend('auto', 'cpu') == expected
    assert available_backends('cpu') == ['reference'] + (
        ['cpu'] if expected == 'cpu' else [])


def test_unknown_backend_lists_valid_names(clean_env):
    with pytest.raises(ValueError,
                       match="'reference', 'cpu', 'triton', 'cuda'"):
        resolve_backend('tritonn', 'cpu')
    clean_env.setenv('VSSM_SCAN_BACKEND', 'bogus')
    with pytest.raises(ValueError, match='VSSM_SCAN_BACKEND'):
        resolve_backend(None, 'cpu')


def test_unavailable_backend_raises_with_instructions(clean_env):
    with pytest.raises(RuntimeError) as info:
        resolve_backend('cuda', 'cpu')
    assert "Backends available for cpu tensors: ['reference'" in str(
        info.value)
    # On a GPU machine without the extension: how to build it.
    from vssm_mm.ops.selective_scan.backends import unavailable_reason
    try:
        import vssm_mm._C  # noqa: F401
    except ImportError:
        reason = unavailable_reason('cuda', 'cuda')
        assert 'FORCE_CUDA=1' in reason and 'pip install -e .' in reason
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        resolve_backend('triton', 'cpu')
    # An explicit request never falls back silently, not even from the env.
    clean_env.setenv('VSSM_SCAN_BACKEND', 'triton')
    inputs = {k: v.detach() for k, v in make_inputs().items()
              if v is not None}
    with pytest.raises(RuntimeError, match='VSSM_SCAN_BACKEND'):
        selective_scan(inputs['u'], inputs['delta'], inputs['A'],
                       inputs['B'], inputs['C'])


def test_env_var_selects_backend(clean_env):
    from vssm_mm.ops.selective_scan import backends
    # Whether triton was imported before TRITON_INTERPRET was set depends on
    # the tests that ran before (torch.compile imports it); that check has
    # its own test in test_selective_scan_triton.py.
    clean_env.setattr(backends, '_triton_interpreter_error', lambda: None)
    clean_env.setenv('VSSM_SCAN_BACKEND', 'reference')
    assert resolve_backend(None, 'cpu') == 'reference'
    clean_env.setenv('TRITON_INTERPRET', '1')
    clean_env.setenv('VSSM_SCAN_BACKEND', 'triton')
    assert resolve_backend(None, 'cpu') == 'triton'
    # The argument wins over the environment.
    assert resolve_backend('reference', 'cpu') == 'reference'
    # 'auto' never picks Triton for CPU tensors, even when interpreting.
    clean_env.delenv('VSSM_SCAN_BACKEND')
    assert resolve_backend(None, 'cpu') == ('cpu' if _cpu_kernels_built()
                                            else 'reference')


# ---------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------
class _ScanModule(torch.nn.Module):

    def __init__(self, with_z):
        super().__init__()
        self.with_z = with_z

    def forward(self, u, delta, A, B, C, D, z):
        return selective_scan(u, delta, A, B, C, D=D,
                              z=z if self.with_z else None,
                              delta_softplus=True)


def _traced_scan_nodes(with_z):
    inputs = {k: v.detach() for k, v in make_inputs(
        batch=2, channels=8, length=10, d_state=4).items()}
    args = tuple(inputs[k] for k in 'u delta A B C D z'.split())
    traced = torch.jit.trace(_ScanModule(with_z), args)
    return [n for n in traced.graph.nodes() if n.kind() == 'prim::PythonOp']


@pytest.mark.filterwarnings('ignore::FutureWarning')
@pytest.mark.parametrize('with_z', [False, True])
def test_flop_handle_on_traced_graph(with_z):
    nodes = _traced_scan_nodes(with_z)
    assert len(nodes) == 1
    key = 'prim::PythonOp.' + nodes[0].pyname()
    assert key in SCAN_FLOP_HANDLES
    flops = SCAN_FLOP_HANDLES[key](list(nodes[0].inputs()),
                                   list(nodes[0].outputs()))
    batch, channels, length, d_state = 2, 8, 10, 4
    expected = 9 * batch * length * channels * d_state + \
        batch * channels * length * (2 if with_z else 1)
    assert flops == expected
    assert selective_scan_flop_jit is SCAN_FLOP_HANDLES[key]


@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_flop_handle_with_mmengine():
    analysis = pytest.importorskip('mmengine.analysis')
    inputs = {k: v.detach() for k, v in make_inputs(
        batch=2, channels=8, length=10, d_state=4).items()}
    args = tuple(inputs[k] for k in 'u delta A B C D z'.split())
    analyzer = analysis.FlopAnalyzer(_ScanModule(True), args)
    analyzer.set_op_handle(**SCAN_FLOP_HANDLES)
    assert analyzer.total() == 9 * 2 * 10 * 8 * 4 + 2 * 2 * 8 * 10
