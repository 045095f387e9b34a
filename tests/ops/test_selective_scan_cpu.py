"""The 'cpu' backend (vssm_mm._C_cpu, csrc/cpu/) against the reference backend.

Test design (every case compares the output, the last state and the gradients of all eight
tensor inputs with the reference, which the naive per-token loop checks in
test_selective_scan.py):

* short sequences, full product: N in {1, 4, 16, 64} x L in {1, 2, 49} x B/C groups {1, 2} x
  delta groups r {1, 2} x z on/off x last-state gradient on/off, in fp32 (192 cases, the
  combinations of options are where indexing mistakes hide), and every N x L with fp16 and
  bf16 inputs;
* long sequences, sampled: L = 1023, 4097 and 70,001 (15, 64 and 1,094 saved chunks plus a
  partial one) with each N, dtype and option appearing at least once; the per-token work is the
  same as for short sequences, what length adds is the carries between chunks;
* every instruction set this CPU supports (AVX-512, AVX2, the portable build), the row kernels
  (N a multiple of the vector width) against the lane kernels, decays below the exponent range
  (the clamped path), fp16/bf16 inputs against a float64 run, identical results with 1 and 2
  threads, and the torch.compile op.

64-bit offsets are not exercised (that needs tensors of more than 2^31 elements); the kernels
compute every offset in int64_t.
"""
import os
import shutil

import pytest
import torch
from ops.test_selective_scan import REL_TOL, assert_close, make_inputs, run

from vssm_mm.ops.selective_scan import selective_scan
from vssm_mm.ops.selective_scan.backends import resolve_backend
from vssm_mm.ops.selective_scan.cpu_backend import row_kernels


def _extension():
    try:
        import vssm_mm._C_cpu as ext
    except ImportError as err:
        if shutil.which('c++') and os.environ.get('VSSM_REQUIRE_MM_STACK') == '1':
            raise RuntimeError(
                f'vssm_mm._C_cpu is not built ({err}) although a C++ compiler is here; '
                'build it with `pip install -e . --no-build-isolation` or '
                '`python setup.py build_ext --inplace`') from err
        return None
    return ext


ext = _extension()
pytestmark = pytest.mark.skipif(ext is None, reason='vssm_mm._C_cpu is not built')


def compare(dtype=torch.float32, with_last=True, out_float32=False, **shape):
    """cpu vs reference on the same inputs: output, last state and all gradients."""
    inputs = make_inputs(dtype=dtype, **shape)
    expected, out_grad, last_grad = run(selective_scan, inputs, backend='reference',
                                        out_float32=out_float32)
    if not with_last:
        last_grad = None
        expected, out_grad, _ = run(selective_scan, inputs, out_grad, None,
                                    backend='reference', out_float32=out_float32)
    actual, _, _ = run(selective_scan, inputs, out_grad, last_grad, backend='cpu',
                       out_float32=out_float32)
    assert_close(actual, expected, REL_TOL[dtype], context=f'{dtype} {shape}')
    return actual


@pytest.mark.parametrize('d_state', [1, 4, 16, 64])
@pytest.mark.parametrize('length', [1, 2, 49])
@pytest.mark.parametrize('groups', [1, 2])
@pytest.mark.parametrize('delta_ratio', [1, 2])
@pytest.mark.parametrize('with_z', [False, True])
@pytest.mark.parametrize('with_last', [False, True])
def test_short_sequences_all_options(d_state, length, groups, delta_ratio, with_z, with_last):
    compare(d_state=d_state, length=length, groups=groups, delta_ratio=delta_ratio,
            with_z=with_z, with_last=with_last, channels=12, batch=2)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('d_state', [1, 4, 16, 64])
@pytest.mark.parametrize('length', [1, 2, 49])
def test_short_sequences_half_inputs(dtype, d_state, length):
    compare(dtype=dtype, d_state=d_state, length=length, groups=2, delta_ratio=2,
            channels=12)


@pytest.mark.parametrize('length,d_state,dtype,groups,delta_ratio,with_z,out_float32', [
    (1023, 1, torch.float32, 1, 1, True, False),
    (1023, 4, torch.bfloat16, 2, 2, False, True),
    (1023, 16, torch.float16, 4, 1, True, False),
    (1023, 64, torch.float32, 2, 4, True, False),
    (4097, 1, torch.bfloat16, 2, 1, True, False),
    (4097, 16, torch.float32, 1, 2, False, False),
    (4097, 64, torch.float16, 2, 1, True, True),
    (70001, 1, torch.float32, 1, 2, True, False),
    (70001, 16, torch.float32, 2, 1, False, False),
])
def test_long_sequences(length, d_state, dtype, groups, delta_ratio, with_z, out_float32):
    channels = 8 if length < 70001 else 4
    compare(dtype=dtype, length=length, d_state=d_state, groups=groups,
            delta_ratio=delta_ratio, with_z=with_z, out_float32=out_float32,
            channels=channels, batch=1 if length == 70001 else 2)


@pytest.mark.parametrize('isa', ext.available_isas() if ext is not None else [])
def test_every_instruction_set(isa):
    """Each compiled instruction set on channel counts that fill and do not fill a vector, with
    the row kernels on and off (N = 16 runs on the lane kernels then)."""
    try:
        ext.set_isa(isa)
        assert ext.isa() == isa
        for channels, groups in ((48, 3), (20, 2)):
            for rows in (True, False):
                with row_kernels(rows):
                    compare(channels=channels, groups=groups, d_state=16, length=150,
                            delta_ratio=2)
            compare(channels=channels, groups=groups, d_state=1, length=150)
            compare(channels=channels, groups=groups, d_state=5, length=70, with_z=False)
    finally:
        ext.set_isa('')
    assert ext.isa() == ext.available_isas()[0]


@pytest.mark.parametrize('d_state', [8, 16, 32, 64])
@pytest.mark.parametrize('with_z', [False, True])
def test_row_and_lane_kernels(d_state, with_z):
    """N a multiple of the vector width runs on the row kernels where they are compiled in
    (AVX2 and portable builds); switched off, the lane kernels run. Both match the reference
    and each other (not bit for bit: they sum over states in different orders)."""
    shape = dict(d_state=d_state, length=150, channels=24, groups=2, delta_ratio=2,
                 with_z=with_z)
    results = {}
    for rows in (True, False):
        with row_kernels(rows):
            assert ext.row_kernels() == rows
            results[rows] = compare(**shape)
    assert ext.row_kernels()
    assert_close(results[True], results[False], REL_TOL[torch.float32])


def test_decays_below_the_exponent_range():
    """dt A below -126 / log2(e) (decays under 2^-126) goes through the clamped exponent; the
    row kernels take it only for the chunks that need it, here half of the channels."""
    inputs = make_inputs(d_state=16, length=200, channels=16, groups=1)
    with torch.no_grad():
        inputs['A'][::2].mul_(200.0)  # dt A down to about -800 on every other channel
    expected, out_grad, last_grad = run(selective_scan, inputs, backend='reference')
    for rows in (True, False):
        with row_kernels(rows):
            actual, _, _ = run(selective_scan, inputs, out_grad, last_grad, backend='cpu')
        assert_close(actual, expected, REL_TOL[torch.float32], context=f'rows={rows}')


def test_large_outputs_written_with_streaming_stores():
    """Outputs and input gradients of 16 MiB or more are written with streaming stores where
    the instruction set has them (AVX-512: whole 64-byte lines of 16 channels, L a multiple
    of 16). Against the reference (output, last state, all gradients), and the forward against
    the same kernels writing a smaller output (a prefix of the same tensors)."""
    shape = dict(batch=1, channels=64, groups=2, d_state=1, length=65536, with_z=True)
    assert 64 * 65536 * 4 >= 16 << 20
    compare(**shape)
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs(**shape).items()}
    names = ('u', 'delta', 'A', 'B', 'C')
    outs = []
    for length in (65536, 4096):
        cut = {k: (v[..., :length].contiguous() if k in ('u', 'delta', 'z', 'B', 'C') else v)
               for k, v in inputs.items()}
        outs.append(selective_scan(*[cut[n] for n in names], D=cut['D'], z=cut['z'],
                                   delta_bias=cut['delta_bias'], delta_softplus=True,
                                   backend='cpu'))
    assert torch.equal(outs[0][..., :4096], outs[1])


@pytest.mark.parametrize('isa', ext.available_isas() if ext is not None else [])
def test_softplus_of_delta_is_accurate(isa):
    """dt = softplus(delta) read back through a one-token scan (A = 0, u = B = C = 1, so the
    output is dt) against float64, for delta in [-40, 25]: within about an ulp on average, like
    torch's float32 softplus (an exp taken as exp2 of a rounded product was 10x worse)."""
    n = 16 * 4096
    x = torch.linspace(-40, 25, n).view(1, n, 1)
    ones = torch.ones(1, 1, 1, 1)
    try:
        ext.set_isa(isa)
        out, _ = ext.selective_scan_fwd(torch.ones(1, n, 1), x, torch.zeros(n, 1), ones, ones,
                                        None, None, None, True, True)
    finally:
        ext.set_isa('')
    exact = torch.nn.functional.softplus(x.double())
    rel = ((out.double() - exact) / exact).abs()
    assert rel.max() < 4e-7 and rel.mean() < 6e-8, (rel.max().item(), rel.mean().item())


def test_unknown_instruction_set_is_an_error():
    with pytest.raises(RuntimeError, match="instruction set 'sse9' is not available"):
        ext.set_isa('sse9')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_as_close_to_float64_as_the_reference(dtype):
    """Both backends compute in fp32 from the same fp16/bf16 inputs; the kernel's error against
    a float64 run on those inputs must not exceed the reference's."""
    inputs = make_inputs(dtype=dtype, batch=2, channels=16, groups=2, d_state=16, length=300,
                         delta_ratio=2)
    exact64 = {k: v.detach().double().requires_grad_() if v is not None else None
               for k, v in inputs.items()}
    for out_float32 in (False, True):
        truth, out_grad, last_grad = run(selective_scan, exact64, backend='reference',
                                         out_float32=out_float32)
        out_grad, last_grad = out_grad.to(dtype), last_grad.float()
        if out_float32:
            out_grad = out_grad.float()
        results = {name: run(selective_scan, inputs, out_grad, last_grad, backend=name,
                             out_float32=out_float32)[0] for name in ('reference', 'cpu')}
        for key, exact in truth.items():
            scale = exact.abs().max().item() + 1e-12
            err = {name: (r[key].double() - exact).abs().max().item() / scale
                   for name, r in results.items()}
            # 1% slack: both round the same fp32 values to the same output dtype.
            assert err['cpu'] <= err['reference'] * 1.01 + 1e-7, (key, out_float32, err)


def test_thread_counts_give_identical_results():
    inputs = make_inputs(batch=2, channels=64, groups=2, d_state=16, length=300,
                         delta_ratio=2)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run(selective_scan, inputs, backend='cpu')[0])
    finally:
        torch.set_num_threads(threads)
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_float64_and_large_state_run_on_the_reference():
    inputs = make_inputs(dtype=torch.float64, length=20)
    expected, out_grad, last_grad = run(selective_scan, inputs, backend='reference')
    actual, _, _ = run(selective_scan, inputs, out_grad, last_grad, backend='cpu')
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    big = make_inputs(d_state=300, length=5, channels=4)
    expected, out_grad, last_grad = run(selective_scan, big, backend='reference')
    actual, _, _ = run(selective_scan, big, out_grad, last_grad, backend='cpu')
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_largest_kernel_state():
    compare(d_state=256, length=70, channels=4, groups=1)


def test_non_contiguous_inputs_and_mixed_dtypes():
    inputs = make_inputs(length=70, d_state=16)
    views = {k: v.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
             if k in ('u', 'delta', 'z', 'B', 'C') else v for k, v in inputs.items()}
    views['B'] = views['B'].detach().to(torch.bfloat16).requires_grad_()
    assert not views['u'].is_contiguous()
    expected, out_grad, last_grad = run(selective_scan, views, backend='reference')
    actual, _, _ = run(selective_scan, views, out_grad, last_grad, backend='cpu')
    assert actual['B'].dtype == torch.bfloat16
    assert_close(actual, expected, REL_TOL[torch.bfloat16])


def test_gradient_of_the_last_state_only():
    inputs = make_inputs(length=100, d_state=4)
    args = [inputs[k] for k in ('u', 'delta', 'A', 'B', 'C')]
    grads = {}
    for name in ('reference', 'cpu'):
        _, last = selective_scan(*args, D=inputs['D'], z=inputs['z'],
                                 delta_bias=inputs['delta_bias'], delta_softplus=True,
                                 return_last_state=True, backend=name)
        grads[name] = torch.autograd.grad(last.sum(), args)
    for got, want in zip(grads['cpu'], grads['reference']):
        assert (got - want).abs().max() <= 2e-5 * want.abs().max() + 1e-7


def test_saves_no_per_token_states():
    inputs = make_inputs(batch=2, channels=8, length=3000, d_state=16, with_z=False)
    given = [v for v in inputs.values() if v is not None]
    out = selective_scan(inputs['u'], inputs['delta'], inputs['A'], inputs['B'], inputs['C'],
                         D=inputs['D'], delta_bias=inputs['delta_bias'], backend='cpu')
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    extra = sum(t.numel() for t in saved) - sum(v.numel() for v in given)
    chunks = -(-3000 // ext.chunk_length())
    assert extra == 2 * 8 * chunks * 16


def test_auto_picks_cpu_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv('VSSM_SCAN_BACKEND', raising=False)
    assert resolve_backend(None, 'cpu') == 'cpu'
    with pytest.raises(RuntimeError, match='run on CPU tensors, got meta'):
        resolve_backend('cpu', 'meta')


def test_torch_compile_uses_library_op():
    from vssm_mm.ops.selective_scan.library import selective_scan_op
    inputs = make_inputs(length=150, d_state=16, delta_ratio=2)
    names = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
    args = [inputs[n] for n in names]

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                              delta_softplus=True, return_last_state=True, backend='cpu')

    out, last = torch.compile(fn, fullgraph=True, backend='aot_eager')(*args)
    expected, expected_last = fn(*args)
    assert torch.equal(out, expected) and torch.equal(last, expected_last)
    grads = torch.autograd.grad(out.sum() + last.sum(), args)
    expected_grads = torch.autograd.grad(expected.sum() + expected_last.sum(), args)
    for got, want in zip(grads, expected_grads):
        assert torch.equal(got, want)
    torch.library.opcheck(selective_scan_op, tuple(args) + (True, False, 'cpu'))

