"""Triton selective scan vs the reference backend (values and all gradients).

With a GPU the kernels run compiled on CUDA tensors. Without one they run in
the Triton interpreter on CPU tensors; TRITON_INTERPRET=1 must be set before
triton is first imported (triton decorates its own library at import), so
on CPU the parent test process re-runs this file in a child pytest with the
variable set (``test_kernels_in_triton_interpreter``). Shapes are tiny: the
interpreter runs every program instance in Python.
"""
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from vssm_testing import gpu_scan_tolerance

from vssm_mm.ops.selective_scan import resolve_backend, selective_scan
from vssm_mm.ops.selective_scan import triton_backend

HAS_TRITON = importlib.util.find_spec('triton') is not None
INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'
ON_GPU = torch.cuda.is_available()
DEVICE = 'cuda' if ON_GPU and not INTERPRETED else 'cpu'

needs_kernel = pytest.mark.skipif(
    not HAS_TRITON or not (INTERPRETED or ON_GPU),
    reason='needs triton and a GPU (on CPU: run by '
    'test_kernels_in_triton_interpreter in a child process)')


def _load_sibling(name):
    # The suite imports tests with --import-mode=importlib and only tests/ on
    # the path, so share helpers with the reference tests by file path.
    spec = importlib.util.spec_from_file_location(
        f'_{name}_helpers', osp.join(osp.dirname(__file__), f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _load_sibling('test_selective_scan')
REL_TOL, assert_close = _helpers.REL_TOL, _helpers.assert_close
make_inputs, run = _helpers.make_inputs, _helpers.run


@pytest.mark.cpu_only
@pytest.mark.skipif(INTERPRETED or ON_GPU or not HAS_TRITON,
                    reason='parent process only, on a machine without a GPU')
def test_kernels_in_triton_interpreter():
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    python_path = os.pathsep.join(
        p for p in (repo, os.environ.get('PYTHONPATH')) if p)
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=python_path)
    env.pop('VSSM_SCAN_BACKEND', None)
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
           '-x', osp.abspath(__file__)]
    proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    passed = re.search(r'(\d+) passed', proc.stdout)
    # The kernel comparisons really ran (they skip in this parent process).
    assert passed and int(passed.group(1)) >= 10, proc.stdout


@pytest.fixture
def small_chunks(monkeypatch):
    """64 (tokens x states) per chunk, so that tiny L spans several chunks."""
    monkeypatch.delenv('VSSM_SCAN_BACKEND', raising=False)
    monkeypatch.setattr(triton_backend, 'MAX_CHUNK_ELEMENTS', 64)


def compare_with_reference(dlast=True, **shape):
    inputs = make_inputs(**shape)
    inputs = {k: v.detach().to(DEVICE).requires_grad_()
              if v is not None else None for k, v in inputs.items()}
    expected, out_grad, last_grad = run(selective_scan, inputs,
                                        backend='reference')
    if not dlast:
        last_grad = None
        expected, _, _ = run(selective_scan, inputs, out_grad, None,
                             backend='reference')
    actual, _, _ = run(selective_scan, inputs, out_grad, last_grad,
                       backend='triton')
    dtype = shape.get('dtype', torch.float32)
    # Interpreted (exact numpy math): different summation orders (tree scan,
    # fp32 atomics) cost a few fp32 ulps of the largest value. Compiled, tl.exp
    # is an approximate exp2 as in the CUDA extension: see gpu_scan_tolerance.
    tol = max(REL_TOL[dtype], 2e-5) if DEVICE == 'cpu' else \
        gpu_scan_tolerance(dtype, shape.get('length', 37))
    assert_close(actual, expected, tol, context=str(shape))


CASES = [
    # (dtype, groups, with_z, d_state, delta_ratio, length)
    (torch.float32, 1, True, 1, 1, 150),  # 3 chunks of 64, padded last
    (torch.float32, 2, False, 4, 2, 37),  # oflex delta, 3 chunks of 16
    (torch.float32, 4, True, 16, 1, 20),  # N = 16, 2 chunks
    (torch.float16, 2, True, 4, 1, 33),
    (torch.bfloat16, 1, False, 2, 4, 33),
    (torch.float32, 2, True, 3, 1, 1),  # single token, N not a power of 2
    (torch.float32, 1, False, 64, 1, 19),  # the largest N we support
]


@needs_kernel
@pytest.mark.parametrize('dtype,groups,with_z,d_state,delta_ratio,length',
                         CASES)
def test_triton_matches_reference_small(small_chunks, dtype, groups,
                                              with_z, d_state, delta_ratio,
                                              length):
    compare_with_reference(batch=2, channels=8, length=length,
                           d_state=d_state, groups=groups,
                           delta_ratio=delta_ratio, dtype=dtype,
                           with_z=with_z)


@needs_kernel
def test_triton_without_last_state_grad(small_chunks):
    compare_with_reference(dlast=False, batch=1, channels=4, length=40,
                           d_state=2, groups=1)


@needs_kernel
def test_triton_out_float32(small_chunks):
    inputs = {k: v.detach().to(DEVICE) for k, v in make_inputs(
        dtype=torch.bfloat16, length=9).items()}
    args = [inputs[k] for k in 'u delta A B C'.split()]
    out = selective_scan(*args, D=inputs['D'], out_float32=True,
                         backend='triton')
    ref = selective_scan(*args, D=inputs['D'], out_float32=True,
                         backend='reference')
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_triton_fp32_b_c_with_bf16_u(small_chunks):
    """fp32 B/C next to bf16 u, delta and z: dB/dC come back in fp32 at fp32
    accuracy (rounding them to bf16 would cost ~4e-3 of their largest value)."""
    inputs = {k: v.detach() if v is not None else None
              for k, v in make_inputs(length=40, d_state=4, groups=2).items()}
    for name in ('u', 'delta', 'z'):
        inputs[name] = inputs[name].to(torch.bfloat16)
    inputs = {k: v.to(DEVICE).requires_grad_() if v is not None else None
              for k, v in inputs.items()}
    expected, out_grad, last_grad = run(selective_scan, inputs,
                                        backend='reference')
    actual, _, _ = run(selective_scan, inputs, out_grad, last_grad,
                       backend='triton')
    tol = 2e-5 if DEVICE == 'cpu' else gpu_scan_tolerance(torch.float32)
    for name in ('B', 'C', 'A', 'D', 'delta_bias'):
        assert actual[name].dtype == torch.float32
        err = (actual[name] - expected[name]).abs().max()
        assert err <= tol * expected[name].abs().max(), (name, float(err))
    assert actual['u'].dtype == torch.bfloat16


@needs_kernel
def test_env_var_routes_to_triton(small_chunks, monkeypatch):
    calls = []
    original = triton_backend.forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_backend, 'forward', spy)
    monkeypatch.setenv('VSSM_SCAN_BACKEND', 'triton')
    assert resolve_backend(None, DEVICE) == 'triton'
    inputs = {k: v.detach().to(DEVICE)
              for k, v in make_inputs(length=5).items()}
    selective_scan(*(inputs[k] for k in 'u delta A B C'.split()))
    assert calls == [1]


@pytest.mark.skipif(not HAS_TRITON, reason='needs triton')
def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    inputs = {k: v.detach() for k, v in make_inputs(length=5).items()}
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        selective_scan(*(inputs[k] for k in 'u delta A B C'.split()),
                       backend='triton')


def test_block_sizes_respect_groups():
    # A program must never straddle two B/C groups.
    for channels, groups in [(768, 4), (12, 3), (10, 2), (7, 1)]:
        block_d, _, _ = triton_backend.block_sizes(channels, groups, 16, 3136)
        assert (channels // groups) % block_d == 0


@pytest.mark.skipif(INTERPRETED or not HAS_TRITON,
                    reason='needs triton imported without the interpreter')
def test_interpreter_switched_on_too_late(monkeypatch):
    import triton  # noqa: F401  (imported compiled, as in a normal run)
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    with pytest.raises(RuntimeError, match='before the Python process'):
        resolve_backend('triton', 'cpu')


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU or INTERPRETED or not HAS_TRITON,
                    reason='needs a CUDA GPU')
@pytest.mark.parametrize('d_state,groups,length,dtype', [
    (1, 4, 3136, torch.float32), (16, 4, 3136, torch.float32),
    (16, 1, 4097, torch.float32), (1, 2, 784, torch.bfloat16),
    (64, 1, 300, torch.float16)])
def test_triton_gpu_matches_reference(d_state, groups, length, dtype):
    compare_with_reference(batch=2, channels=64, length=length,
                           d_state=d_state, groups=groups, dtype=dtype)
