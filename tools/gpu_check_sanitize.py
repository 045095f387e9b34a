#!/usr/bin/env python
"""Small forward + backward calls of the selective-scan kernels, for compute-sanitizer.

tools/gpu_check.py runs this under ``compute-sanitizer --tool memcheck`` and ``--tool
racecheck``. The cases cover every chunk length of the kernels (128, 512 and 2048 tokens, one
token, a padded multi-chunk row), N = 1, 16 and 64, one and several B/C groups, with and without
z, delta groups, fp32 and bf16 inputs and fp32 outputs of bf16 inputs. Shapes are tiny: the
sanitizers slow kernels down by two to three orders of magnitude.

    python tools/gpu_check_sanitize.py                      # the 'cuda' backend on the GPU
    python tools/gpu_check_sanitize.py --backend reference --device cpu   # the driver itself

Exit status 0 when every case ran (the sanitizer reports errors through its own exit status).
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from vssm_mm.ops.selective_scan import selective_scan  # noqa: E402

# (length, N, groups, with_z, delta_ratio, dtype, out_float32)
CASES = [
    (1, 1, 1, False, 1, 'fp32', False),      # one token
    (49, 16, 2, True, 1, 'fp32', False),     # 128-token chunk, padded
    (129, 64, 1, False, 2, 'bf16', False),   # 512-token chunk, N = 64, delta groups
    (512, 1, 2, True, 1, 'bf16', True),      # a full 512-token chunk, bf16 in, fp32 out
    (600, 16, 4, True, 2, 'fp32', False),    # 2048-token chunk, padded
    (2048, 1, 1, False, 1, 'fp32', False),   # exactly one 2048-token chunk
    (4100, 16, 2, True, 1, 'bf16', True),    # three chunks, the last one nearly empty
    (2100, 64, 2, True, 4, 'fp32', False),   # two chunks, N = 64, four channels per delta row
]
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def run_case(length, d_state, groups, with_z, delta_ratio, dtype, out_float32, backend,
             device, batch=1, channels=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[dtype]

    def randn(*shape, scale=1.0, shift=0.0, to=dtype):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(to).to(device)

    u = randn(batch, channels, length).requires_grad_()
    delta = randn(batch, channels // delta_ratio, length, scale=0.5).requires_grad_()
    A = (-torch.rand(channels, d_state, generator=gen) * 4 - 0.1).to(device).requires_grad_()
    B = randn(batch, groups, d_state, length).requires_grad_()
    C = randn(batch, groups, d_state, length).requires_grad_()
    D = randn(channels, to=torch.float32).requires_grad_()
    z = randn(batch, channels, length).requires_grad_() if with_z else None
    bias = randn(channels // delta_ratio, scale=0.5, shift=-1.0,
                 to=torch.float32).requires_grad_()
    out = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                         out_float32=out_float32, backend=backend)
    inputs = [t for t in (u, delta, A, B, C, D, z, bias) if t is not None]
    grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all())
                                                      for g in grads)
    return finite


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backend', default='cuda')
    parser.add_argument('--device', default='cuda')
    args = parser.parse_args(argv)
    bad = []
    for case in CASES:
        if not run_case(*case, backend=args.backend, device=args.device):
            bad.append(case)
        print('case', case, 'ok' if case not in bad else 'NOT FINITE', flush=True)
    print(f'ran {len(CASES)} cases (forward and backward) with backend={args.backend} '
          f'on {args.device}; {len(bad)} with non-finite values')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
