"""The CUDA kernels' source, run on the CPU, vs the reference backend.

``tests/ops/cuda_emulation`` compiles ``csrc/selective_scan/*_kernel.cuh`` with the host C++
compiler against a small emulation of the CUDA built-ins (one std::thread per CUDA thread,
barriers for ``__syncthreads`` and warp shuffles, std::atomic_ref for ``atomicAdd``). This checks
the kernels' algorithm (chunk plan, block scans, the adjoint pass, reductions and atomics, dtype
conversions) on machines without a GPU; the GPU itself is tested by test_selective_scan_cuda.py.
"""
import os.path as osp
import shutil
import subprocess

import numpy as np
import pytest
import torch
from ops.test_selective_scan import REL_TOL, make_inputs

from vssm_mm.ops.selective_scan import selective_scan

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HERE = osp.join(osp.dirname(osp.abspath(__file__)), 'cuda_emulation')
CXX = shutil.which('g++') or shutil.which('c++')
DTYPES = {torch.float32: 'f32', torch.float16: 'f16', torch.bfloat16: 'bf16'}


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
    if CXX is None:
        pytest.skip('needs a C++20 compiler (g++)')
    exe = tmp_path_factory.mktemp('emulator') / 'run_kernels'
    cmd = [CXX, '-std=c++20', '-O2', '-pthread', '-DVSSM_CUDA_EMULATION',
           '-Wno-unknown-pragmas', '-I', osp.join(REPO, 'csrc', 'selective_scan'), '-I', HERE,
           osp.join(HERE, 'run_kernels.cpp'), '-o', str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and 'c++20' in proc.stderr:
        pytest.skip(f'{CXX} does not support C++20: {proc.stderr[-500:]}')
    assert proc.returncode == 0, proc.stderr[-5000:]
    return exe


def _save(path, tensor):
    tensor.detach().float().contiguous().numpy().tofile(str(path))


def _load(path, like):
    return torch.from_numpy(np.fromfile(str(path), dtype=np.float32)).view(like.shape)


def run_emulated(emulator, work, inputs, dout, out_float32, softplus=True):
    u, delta, A, B = (inputs[k] for k in ('u', 'delta', 'A', 'B'))
    for name in ('u', 'delta', 'A', 'B', 'C', 'D', 'z'):
        if inputs[name] is not None:
            _save(work / name, inputs[name])
    if inputs['delta_bias'] is not None:
        _save(work / 'bias', inputs['delta_bias'])
    _save(work / 'dout', dout)
    batch, dim, length = u.shape
    args = [str(work), DTYPES[u.dtype], int(out_float32), batch, dim, delta.shape[1], length,
            A.shape[1], B.shape[1], int(inputs['D'] is not None), int(inputs['z'] is not None),
            int(inputs['delta_bias'] is not None), int(softplus)]
    proc = subprocess.run([str(emulator), *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = {'out': _load(work / 'out.result', u)}
    n_chunks = -(-length // (128 if length <= 128 else 512 if length <= 512 else 2048))
    x = _load(work / 'x.result', torch.empty(batch, dim, n_chunks, A.shape[1]))
    result['last'] = x[:, :, -1]
    for name, file in (('u', 'du'), ('delta', 'ddelta'), ('A', 'dA'), ('B', 'dB'), ('C', 'dC'),
                       ('D', 'dD'), ('z', 'dz'), ('delta_bias', 'dbias')):
        if inputs[name] is not None:
            result[name] = _load(work / f'{file}.result', inputs[name])
    return result


def reference(inputs, dout, out_float32, softplus=True):
    inputs = {k: v.detach().requires_grad_() if v is not None else None
              for k, v in inputs.items()}
    out, last = selective_scan(inputs['u'], inputs['delta'], inputs['A'], inputs['B'],
                               inputs['C'], D=inputs['D'], z=inputs['z'],
                               delta_bias=inputs['delta_bias'], delta_softplus=softplus,
                               out_float32=out_float32, return_last_state=True,
                               backend='reference')
    names = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad((out.double() * dout.double()).sum(),
                                [inputs[k] for k in names])
    return dict(out=out, last=last, **dict(zip(names, grads)))


# (dtype, N, L, groups, delta_ratio, with_z, out_float32): every launch shape (chunks of 128,
# 512 and 2048 tokens, the backward's 256-thread blocks), several chunks, padded tails, one
# token, delta groups, z, low-precision inputs with fp32 or native outputs.
CASES = [
    (torch.float32, 1, 1, 1, 1, True, False),
    (torch.float32, 4, 49, 2, 1, True, False),
    (torch.float32, 16, 129, 4, 1, False, False),
    (torch.float32, 3, 600, 1, 2, True, False),
    (torch.float32, 1, 4100, 2, 1, True, False),
    (torch.float32, 2, 2048, 1, 1, False, False),
    (torch.float16, 4, 300, 2, 1, True, False),
    (torch.bfloat16, 2, 700, 1, 1, True, True),
    (torch.bfloat16, 1, 100, 4, 4, False, False),
    (torch.float32, 64, 40, 1, 1, True, False),
    (torch.float32, 1, 70001, 1, 1, True, False),  # 35 chunks, a COCO stage-1 length
]


@pytest.mark.parametrize('dtype,d_state,length,groups,delta_ratio,with_z,out_float32', CASES)
def test_emulated_kernels_match_reference(emulator, tmp_path, dtype, d_state, length, groups,
                                          delta_ratio, with_z, out_float32):
    batch, channels = (1, 2) if length > 10000 or d_state > 16 else (2, 4)
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs(
        batch=batch, channels=channels, length=length, d_state=d_state, groups=groups,
        delta_ratio=delta_ratio, dtype=dtype, with_z=with_z).items()}
    out_dtype = torch.float32 if out_float32 else dtype
    dout = torch.randn(inputs['u'].shape, generator=torch.Generator().manual_seed(3)).to(
        out_dtype)
    actual = run_emulated(emulator, tmp_path, inputs, dout, out_float32)
    expected = reference(inputs, dout, out_float32)
    for name, exp in expected.items():
        exp = exp.double()
        act = actual[name].double()
        scale = exp.abs().max().item() + 1e-6
        err = (act - exp).abs().max().item() / scale
        # Outputs and gradients stored in a 16-bit dtype carry its rounding.
        stored = {'out': out_dtype, 'last': torch.float32}.get(name) or inputs[name].dtype
        tol = max(REL_TOL[stored], 2e-5)
        assert err <= tol, f'{name}: relative error {err:.3g} > {tol}'
