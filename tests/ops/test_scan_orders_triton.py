"""Triton gather-sum kernel vs the torch index-map reference (values and gradients).

On a machine with a GPU the kernel tests run natively on CUDA tensors. Without one they run in the
Triton interpreter on CPU tensors; TRITON_INTERPRET must be set before triton is imported, so
the CPU run happens in a child pytest process (`test_kernels_in_triton_interpreter`) that
re-runs this file with TRITON_INTERPRET=1. Shapes are tiny: the interpreter runs each program
instance in Python.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

from vssm_mm.ops.scan_orders import (ATROUS_DIRECTIONS, CROSS2D_DIRECTIONS, MULTISCALE_LOW_RES,
                                     get_scan_order, triton_available)

INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'
ON_GPU = torch.cuda.is_available()
DEVICE = 'cuda' if ON_GPU else 'cpu'

needs_kernel = pytest.mark.skipif(
    not triton_available() or not (INTERPRETED or ON_GPU),
    reason='needs triton and a GPU (on CPU: run through test_kernels_in_triton_interpreter)')

CASES = [  # (directions, H, W, official_vertical_quirk)
    (CROSS2D_DIRECTIONS, 3, 5, False),
    (ATROUS_DIRECTIONS, 5, 3, False),
    (('h', 'v_flip', 'w2', 'w7_flip'), 3, 5, False),
    (('v', 'v_flip', 'w2_flip'), 4, 6, True),
    ((MULTISCALE_LOW_RES['h'],), 2, 3, False),
]


@pytest.mark.cpu_only
@pytest.mark.skipif(INTERPRETED or ON_GPU or not triton_available(),
                    reason='parent process only, on a machine without a GPU')
def test_kernels_in_triton_interpreter():
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    python_path = os.pathsep.join(p for p in (repo_root, os.environ.get('PYTHONPATH')) if p)
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=python_path)
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-x',
           os.path.abspath(__file__)]
    proc = subprocess.run(cmd, env=env, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    passed = re.search(r'(\d+) passed', proc.stdout)
    assert passed and int(passed.group(1)) >= 8, proc.stdout  # the kernel tests really ran


def _rand(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)


def _grads(fn, inputs, grad_out, backend):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs, backend=backend)
    return out, torch.autograd.grad(out, inputs, grad_out)


@needs_kernel
@pytest.mark.parametrize('case', range(len(CASES)))
def test_triton_matches_torch(case):
    directions, height, width, quirk = CASES[case]
    order = get_scan_order(directions, height, width, official_vertical_quirk=quirk)
    num_dirs, seq_len = order.num_directions, order.seq_len
    x = _rand(2, 5, height, width)  # C = 5: a partial channel block
    xg = _rand(2, num_dirs, 5, height, width, seed=1)
    y = _rand(2, num_dirs, 5, seq_len, seed=2)
    calls = [  # (fn, input, upstream gradient shape)
        (lambda t, backend: order.scan(t, backend), x, (2, num_dirs, 5, seq_len)),
        (lambda t, backend: order.scan(t, backend), xg, (2, num_dirs, 5, seq_len)),
        (lambda t, backend: order.merge(t, backend=backend), y, (2, 5, height, width)),
        (lambda t, backend: order.merge(t, sum_directions=False, backend=backend), y,
         (2, num_dirs, 5, height, width)),
    ]
    for i, (fn, inp, grad_shape) in enumerate(calls):
        grad_out = _rand(*grad_shape, seed=10 + i)
        out_ref, (g_ref,) = _grads(fn, [inp], grad_out, 'torch')
        out_tri, (g_tri,) = _grads(fn, [inp], grad_out, 'triton')
        torch.testing.assert_close(out_tri, out_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_tri, g_ref, rtol=1e-6, atol=1e-6)


@needs_kernel
def test_triton_gradcheck_float64():
    order = get_scan_order(('h_flip', 'w2', 'v'), 2, 3)
    x = _rand(1, 1, 2, 3, dtype=torch.float64).requires_grad_(True)
    y = _rand(1, 3, 1, order.seq_len, dtype=torch.float64, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: order.scan(t, backend='triton'), (x,))
    assert torch.autograd.gradcheck(lambda t: order.merge(t, backend='triton'), (y,))


@needs_kernel
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_triton_low_precision_and_strided(dtype):
    order = get_scan_order(CROSS2D_DIRECTIONS, 3, 5)
    tokens = _rand(2, 15, 6, dtype=dtype)  # channel-last (B, L, C) tokens viewed as (B, C, H, W)
    x = tokens.transpose(1, 2).view(2, 6, 3, 5)
    ys = order.scan(x, backend='triton')
    assert torch.equal(ys, order.scan(x, backend='torch'))
    torch.testing.assert_close(order.merge(ys, backend='triton'), order.merge(ys, backend='torch'))


@pytest.mark.gpu
@pytest.mark.skipif(not (ON_GPU and triton_available()), reason='needs a GPU')
def test_no_recompile_for_new_sizes():
    from vssm_mm.ops.scan_orders.triton_gather import _gather_sum_kernel
    for height, width, chans in [(3, 5, 4), (7, 9, 6), (56, 56, 96), (31, 47, 5), (64, 100, 8)]:
        x = torch.randn(2, chans, height, width, device='cuda')
        order = get_scan_order(CROSS2D_DIRECTIONS, height, width)
        order.merge(order.scan(x, backend='triton'), backend='triton')
    torch.cuda.synchronize()
    compiled = _gather_sum_kernel.device_caches[torch.cuda.current_device()][0]
    assert len(compiled) <= 2, f'{len(compiled)} compilations for 5 map sizes'
