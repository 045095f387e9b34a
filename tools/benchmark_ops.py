"""Benchmark the selective-scan backends.

Examples::

    # CPU: chunked reference vs the per-token loop at backbone widths (D 192-768, N 1 and 16)
    python tools/benchmark_ops.py --backends naive,reference

    # GPU: all backends at the stage-1 shapes of the four families, batch 128
    python tools/benchmark_ops.py --device cuda --preset family --batch 128 \
        --backends reference,triton,cuda --json scan_h100.json

'naive' is :func:`selective_scan_naive` (a Python loop over tokens,
differentiated by autograd); 'cpu-lanes' is the cpu backend with its row kernels switched off
(the lane kernels at every N); the others are ``selective_scan(backend=...)``.
GB/s is the compulsory memory traffic (:func:`compulsory_bytes`) over the best time; on a GPU
the last column compares it with the device's peak bandwidth.
"""
import argparse
import itertools
import json
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from vssm_mm.ops.selective_scan import (selective_scan,  # noqa: E402
                                        selective_scan_naive)

# Stage-1 scans at 224x224 (docs/selective_scan.md): (channels, N, L, groups).
FAMILY_SHAPES = {
    'localvmamba_t': (4 * 192, 16, 3136, 4),
    'efficientvmamba_t': (4 * 96, 16, 784, 4),
    'msvmamba_t_full': (192, 1, 3136, 1),
    'msvmamba_t_half': (3 * 192, 1, 784, 3),
    'groupmamba_t_group': (16, 1, 3136, 1),
}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16,
          'bf16': torch.bfloat16}
# Peak HBM bandwidth (GB/s) by device name, for the '% of peak' column; --peak-gbs overrides.
PEAK_GBS = {'H200': 4800, 'H100 NVL': 3900, 'H100 PCIe': 2000, 'H100': 3350,
            'A100-SXM4-80GB': 2039, 'A100 80GB PCIe': 1935, 'A100': 1555}


def compulsory_bytes(mode, batch, channels, d_state, length, groups, in_size, out_size):
    """Bytes a scan must move through memory at least (each input read once, each output
    written once; the tiny per-chunk states and per-channel vectors are left out).

    forward: u, delta (read), out (written), B and C (read once per group);
    backward: u, delta, dout, B, C (read), du, ddelta, dB, dC (written).
    """
    rows = batch * channels * length
    bc = batch * groups * d_state * length
    forward = rows * (2 * in_size + out_size) + 2 * bc * in_size
    if mode == 'fwd':
        return forward
    backward = rows * (2 * in_size + out_size) + 2 * bc * in_size + rows * 2 * in_size + \
        2 * bc * in_size
    return forward + backward


def peak_bandwidth(device, override=None):
    """Peak memory bandwidth in GB/s of a CUDA device (None when unknown)."""
    if override:
        return override
    if not str(device).startswith('cuda'):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in PEAK_GBS.items():
        if key in name:
            return value
    return None


def make_inputs(batch, channels, d_state, length, groups, dtype, device,
                seed=0):
    """Inputs shaped and scaled like a trained VMamba layer, drawn on ``device`` (a CPU
    generator would spend seconds on the hundreds of millions of values of batch 128)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale)

    A = -torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(channels, 1)
    tensors = dict(
        u=randn(batch, channels, length).to(dtype),
        delta=randn(batch, channels, length, scale=0.5).to(dtype),
        A=A,
        B=randn(batch, groups, d_state, length).to(dtype),
        C=randn(batch, groups, d_state, length).to(dtype),
        D=torch.ones(channels, device=device),
        delta_bias=randn(channels, scale=0.5) - 4.0,
    )
    return {k: v.to(device).requires_grad_() for k, v in tensors.items()}


def run_once(backend, inputs, mode, grad, out_float32=False):
    args = (inputs['u'], inputs['delta'], inputs['A'], inputs['B'],
            inputs['C'])
    kwargs = dict(D=inputs['D'], delta_bias=inputs['delta_bias'],
                  delta_softplus=True, out_float32=out_float32)
    if backend == 'naive':
        out = selective_scan_naive(*args, **kwargs)
    elif backend == 'cpu-lanes':
        from vssm_mm.ops.selective_scan.cpu_backend import row_kernels
        with row_kernels(False):
            out = selective_scan(*args, backend='cpu', **kwargs)
            if mode == 'fwdbwd':
                return torch.autograd.grad(out, [t for t in inputs.values() if t.requires_grad],
                                           grad)
    else:
        out = selective_scan(*args, backend=backend, **kwargs)
    if mode == 'fwdbwd':
        # Gradients as return values: nothing accumulates in the inputs' .grad across repeats.
        tensors = [t for t in inputs.values() if t.requires_grad]
        return torch.autograd.grad(out, tensors, grad)
    return out


def timeit(fn, device, warmup, repeat, timer='wall'):
    sync = torch.cuda.synchronize if device.startswith('cuda') else (
        lambda: None)
    # CPU time of this process: robust on a shared machine, but it adds up
    # the time of all threads, so use it with --threads 1.
    clock = time.process_time if timer == 'cpu' else time.perf_counter
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return min(times), sorted(times)[len(times) // 2]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backends', default='naive,reference',
                        help="comma list of naive, reference, cpu, cpu-lanes, triton, cuda")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--preset', choices=['grid', 'family'],
                        default='grid',
                        help="'grid': D in {192, 768} x N in {1, 16} at L 3136; 'family': stage-1 "
                        'shapes of the four backbones')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--channels', default='192,768')
    parser.add_argument('--d-state', default='1,16')
    parser.add_argument('--length', default='3136')
    parser.add_argument('--groups', type=int, default=4)
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32')
    parser.add_argument('--modes', default='fwd,fwdbwd')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads for CPU runs')
    parser.add_argument('--timer', choices=['wall', 'cpu'], default='wall',
                        help="'cpu': process CPU time (with --threads 1, "
                        'robust to other load on the machine)')
    parser.add_argument('--out-float32', action='store_true',
                        help='fp32 output for fp16/bf16 inputs (as VMamba v2 / MSVMamba v2 use)')
    parser.add_argument('--peak-gbs', type=float, default=None,
                        help='peak memory bandwidth in GB/s for the %%-of-peak column '
                        '(default: known from the GPU name)')
    parser.add_argument('--cpu-isa', default=None,
                        help="instruction set of the cpu backend's kernels: avx512, avx2 or base "
                        '(default: the best this CPU supports), to time what a CPU without '
                        'AVX-512 runs')
    parser.add_argument('--json', help='also write the rows to this file')
    return parser.parse_args()


def shapes(args):
    if args.preset == 'family':
        return [(name, ) + shape for name, shape in FAMILY_SHAPES.items()]
    ints = lambda s: [int(x) for x in s.split(',')]  # noqa: E731
    return [(f'D{c}_N{n}_L{length}', c, n, length, args.groups)
            for c, n, length in itertools.product(
                ints(args.channels), ints(args.d_state), ints(args.length))]


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_isa:
        from vssm_mm.ops.selective_scan.cpu_backend import extension
        extension().set_isa(args.cpu_isa)  # a clear error names the available ones
    backends = args.backends.split(',')
    rows, unavailable = [], set()
    header = (f"{'shape':<22}{'mode':<8}{'backend':<11}{'min ms':>10}"
              f"{'median ms':>11}{'vs naive':>10}{'GB/s':>9}{'% peak':>8}")
    peak = peak_bandwidth(args.device, args.peak_gbs)
    device_name = (torch.cuda.get_device_name(torch.device(args.device))
                   if args.device.startswith('cuda') else 'cpu')
    in_size = DTYPES[args.dtype].itemsize
    out_size = 4 if args.out_float32 else in_size
    print(f'device={args.device} ({device_name}, peak {peak or "?"} GB/s) batch={args.batch} '
          f'dtype={args.dtype} out_float32={args.out_float32} '
          f'threads={torch.get_num_threads()} timer={args.timer}'
          + (f' cpu_isa={args.cpu_isa}' if args.cpu_isa else ''))
    print(header)
    print('-' * len(header))
    for name, channels, d_state, length, groups in shapes(args):
        groups = groups if channels % groups == 0 else 1
        inputs = make_inputs(args.batch, channels, d_state, length, groups,
                             DTYPES[args.dtype], args.device)
        grad = torch.randn(args.batch, channels, length, device=args.device).to(
            torch.float32 if args.out_float32 else DTYPES[args.dtype])
        for mode in args.modes.split(','):
            baseline = None
            for backend in backends:
                if backend in unavailable:
                    continue
                try:
                    best, median = timeit(
                        lambda: run_once(backend, inputs, mode, grad, args.out_float32),
                        args.device, args.warmup, args.repeat, args.timer)
                except (RuntimeError, ValueError) as err:
                    print(f'{backend}: skipped from here on: {err}')
                    unavailable.add(backend)
                    continue
                if backend == 'naive':
                    baseline = best
                speedup = baseline / best if baseline else float('nan')
                gbs = compulsory_bytes(mode, args.batch, channels, d_state, length, groups,
                                       in_size, out_size) / best / 1e9
                of_peak = 100 * gbs / peak if peak else float('nan')
                rows.append(dict(shape=name, channels=channels,
                                 d_state=d_state, length=length,
                                 groups=groups, batch=args.batch,
                                 dtype=args.dtype, device=args.device,
                                 threads=torch.get_num_threads(),
                                 timer=args.timer,
                                 mode=mode, backend=backend,
                                 min_ms=best * 1e3, median_ms=median * 1e3,
                                 speedup_vs_naive=speedup, out_float32=args.out_float32,
                                 device_name=device_name, achieved_gbs=gbs,
                                 peak_gbs=peak, percent_of_peak=of_peak))
                print(f'{name:<22}{mode:<8}{backend:<11}{best * 1e3:>10.3f}'
                      f'{median * 1e3:>11.3f}{speedup:>10.1f}{gbs:>9.1f}{of_peak:>8.1f}',
                      flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
