#!/usr/bin/env python
"""Build, validate and benchmark every GPU path of vssm_mm in one run (about 8 minutes).

On a GPU machine, from the repository root, with torch and Triton installed and mmengine on
the path (for a machine without network: ``bash tools/gpu_check_wheels.sh`` here, then
``make gpu-check`` there, see docs/benchmarks.md):

    python tools/gpu_check.py --out gpu_check_report
    python tools/gpu_check.py --out DIR --stages build,tests      # a subset
    python tools/gpu_check.py --out DIR --dry-run                  # the same stages on the CPU

Stages, each in its own process with its own time limit (a hang or a crash costs that stage
only; the others still run):

  a. build      vssm_mm._C for this GPU's architecture (MAX_JOBS = CPU count), registers and
                spills per kernel from ptxas -v; the extension must import and link.
  b. tests      the CUDA and Triton tests (including torch.compile of a backbone block with
                each backend) with VSSM_REQUIRE_GPU=1: a skip is a failure.
  c. sanitizer  compute-sanitizer memcheck and racecheck over small forward and backward calls
                (tools/gpu_check_sanitize.py).
  d. operator   the selective scan at the four families' backbone shapes, batch 128, forward
                and forward+backward, fp32 and bf16-in/fp32-out, backends cuda, triton and
                reference (plain PyTorch on the GPU); CUDA-event times, GB/s, % of peak.
  e. models     one variant per family (backbone + linear head), 224x224, batch 128 (halved
                until it fits), bf16 autocast: inference and training img/s and peak memory,
                per backend.
  f. report     report.json and report.md in --out (plus gpu_check.log with every stage's
                output).

``--dry-run`` runs the same stages on the CPU with tiny shapes: the build is the
compile-and-link check (tools/check_cuda_build.py), the sanitizer is skipped with a reason
(its driver still runs on the CPU), the GPU tests skip instead of failing. The test suite runs
it (tests/tools/test_gpu_check.py), so this script cannot silently rot.

Exit status: 0 when every stage passed (or was skipped in a dry run), 1 otherwise.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
STAGES = ('build', 'tests', 'sanitizer', 'operator', 'models')
LETTERS = dict(zip(STAGES + ('report', ), 'abcdef'))
# Seconds per stage on an H100/H200 (sum 460 s; the whole run stays under 8 minutes). The
# measuring stages stop early enough to write what they measured (``soft budget``).
TIME_LIMITS = {'build': 120, 'tests': 110, 'sanitizer': 80, 'operator': 75, 'models': 75}
# Dry run on a CPU: a cold compile-and-link check takes minutes on two cores.
DRY_TIME_LIMITS = {'build': 900, 'tests': 240, 'sanitizer': 120, 'operator': 120,
                   'models': 240}
TOTAL_BUDGET = 470
TEST_FILES = ['tests/ops/test_selective_scan_cuda.py', 'tests/ops/test_selective_scan_triton.py',
              'tests/ops/test_scan_orders_triton.py']
DRY_TEST_FILES = ['tests/ops/test_selective_scan_cuda.py']
FAMILY_MODELS = [  # (family, backbone class, arch)
    ('msvmamba', 'MSVMamba', 'tiny'),
    ('efficientvmamba', 'EfficientVMamba', 'tiny'),
    ('localmamba', 'LocalVMamba', 'tiny'),
    ('groupmamba', 'GroupMamba', 'tiny'),
]
SCAN_BACKENDS = ('cuda', 'triton', 'reference')


# ----------------------------------------------------------------------------------------------
# helpers shared by the stages


def _now():
    return time.monotonic()


class Budget:
    """Seconds left of a stage's soft budget."""

    def __init__(self, seconds):
        self.end = _now() + seconds

    def left(self):
        return self.end - _now()


def run_command(cmd, timeout, capture=True, **kwargs):
    """``subprocess.run`` that, past ``timeout`` seconds, kills the command together with
    everything it started (ninja, nvcc, pytest workers). Returns a CompletedProcess whose
    returncode is None when it timed out."""
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return subprocess.CompletedProcess(cmd, code, out or '', err or '')


def _device(dry_run):
    return 'cpu' if dry_run else 'cuda'


def _sync(device):
    import torch
    if device == 'cuda':
        torch.cuda.synchronize()


def time_calls(fn, device, warmup, repeat):
    """(median, min) seconds of ``fn()``: CUDA events around each call after ``warmup`` calls
    on a GPU, the wall clock on the CPU."""
    import torch
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        if device == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], times[0]


def _sig(value, digits=4):
    """``value`` rounded to ``digits`` significant digits."""
    return float(f'{value:.{digits}g}')


def _free_memory():
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# a. build

PTXAS_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(\w+)'")
PTXAS_STACK = re.compile(r'(\d+) bytes stack frame, (\d+) bytes spill stores, '
                         r'(\d+) bytes spill loads')
PTXAS_REGS = re.compile(r'ptxas info\s*: Used (\d+) registers')
PTXAS_SMEM = re.compile(r'(\d+) bytes smem')


def parse_ptxas(text):
    """Per kernel entry: registers, spill stores/loads, stack frame and static shared memory,
    read from ``ptxas -v`` output (one record per entry function and architecture)."""
    kernels, current = [], None
    for line in text.splitlines():
        entry = PTXAS_ENTRY.search(line)
        if entry:
            current = dict(kernel=entry.group(1), arch=entry.group(2))
            kernels.append(current)
            continue
        if current is None:
            continue
        stack = PTXAS_STACK.search(line)
        if stack:
            current.update(stack_bytes=int(stack.group(1)), spill_stores=int(stack.group(2)),
                           spill_loads=int(stack.group(3)))
        regs = PTXAS_REGS.search(line)
        if regs:
            smem = PTXAS_SMEM.search(line)
            current.update(registers=int(regs.group(1)),
                           smem_bytes=int(smem.group(1)) if smem else 0)
            current = None
    names = [k['kernel'] for k in kernels]
    for kernel, name in zip(kernels, _demangle(names)):
        kernel['name'] = name
    return kernels


def _demangle(names):
    cxxfilt = shutil.which('c++filt')
    if not names or not cxxfilt:
        return names
    proc = subprocess.run([cxxfilt], input='\n'.join(names), capture_output=True, text=True)
    out = proc.stdout.splitlines()
    return out if proc.returncode == 0 and len(out) == len(names) else names


def _short_kernel_name(name):
    """'void selective_scan_fwd_kernel<128, 16, float, float>(ScanFwdParams)' ->
    'selective_scan_fwd_kernel<128, 16, float, float>'."""
    name = re.sub(r'^void ', '', name)
    return re.sub(r'\((const )?[\w:]*Scan\w+Params\)$', '', name)


def stage_build(args, budget):
    if args.dry_run:
        proc = run_command([sys.executable, str(TOOLS / 'check_cuda_build.py')],
                           budget.left(), cwd=REPO)
        print(proc.stdout, proc.stderr, sep='\n')
        if proc.returncode is None:
            return dict(status='failed', error='tools/check_cuda_build.py did not finish in '
                        'the stage time limit; give it more with --limits build=SECONDS')
        if proc.returncode != 0:
            return dict(status='failed', error='tools/check_cuda_build.py failed: ' +
                        (proc.stderr or proc.stdout)[-2000:])
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith('[check_cuda_build]')]
        summary = line[-1] if line else proc.stdout.strip()[-300:]
        if 'skipped' in summary and 'unchanged' not in summary:
            return dict(status='skipped', reason=summary)
        return dict(status='passed', summary='compile-and-link check (dry run): ' + summary)

    import torch
    sys.path.insert(0, str(TOOLS))
    from check_cuda_build import ENTRY_POINTS, find_toolkit
    toolkit = find_toolkit()
    if toolkit is None:
        return dict(status='failed', error='no CUDA toolkit (nvcc) found: set CUDA_HOME')
    arch = args.arch or '.'.join(map(str, torch.cuda.get_device_capability()))
    jobs = str(args.jobs or os.cpu_count() or 4)
    work = Path(tempfile.mkdtemp(prefix='vssm_gpu_check_build_'))
    env = dict(os.environ, FORCE_CUDA='1', TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=jobs,
               CUDA_HOME=str(toolkit),
               NVCC_APPEND_FLAGS=(os.environ.get('NVCC_APPEND_FLAGS', '') +
                                  ' -Xptxas -v').strip())
    env.pop('VSSM_NO_CUDA', None)
    print(f'building vssm_mm._C for TORCH_CUDA_ARCH_LIST={arch} with {toolkit}/bin/nvcc '
          f'(MAX_JOBS={jobs}) in {work}', flush=True)
    start = _now()
    build = run_command(
        [sys.executable, 'setup.py', 'build_ext', '--build-lib', str(work / 'lib'),
         '--build-temp', str(work / 'tmp')], budget.left(), cwd=REPO, env=env)
    build_seconds = _now() - start
    log = build.stdout + '\n' + build.stderr
    print(log[-200000:])
    kernels = parse_ptxas(log)
    figures = dict(arch=arch, max_jobs=int(jobs), build_seconds=round(build_seconds, 1),
                   kernels=[dict(k, name=_short_kernel_name(k.get('name', k['kernel'])))
                            for k in kernels])
    if build.returncode is None:
        shutil.rmtree(work, ignore_errors=True)
        return dict(status='failed', figures=figures,
                    error=f'the build did not finish in {build_seconds:.0f} s (stage time '
                    'limit); give it more with --limits build=SECONDS')
    if build.returncode != 0:
        return dict(status='failed', figures=figures,
                    error=f'the extension does not compile (exit {build.returncode}): '
                    f'{build.stderr[-3000:]}')
    built = sorted((work / 'lib' / 'vssm_mm').glob('_C*.so'))
    if not built:
        return dict(status='failed', figures=figures,
                    error='the build produced no vssm_mm/_C*.so')
    target = REPO / 'vssm_mm' / built[0].name
    if target.exists() and target.read_bytes() != built[0].read_bytes():
        kept = target.with_name(target.name + '.before-gpu-check')
        target.replace(kept)
        print(f'kept the extension that was there as {kept}')
    shutil.copy2(built[0], target)
    shutil.rmtree(work, ignore_errors=True)
    check = subprocess.run(
        [sys.executable, '-c',
         'import torch, vssm_mm._C as ext\n'
         'from vssm_mm.ops.selective_scan.backends import unavailable_reason\n'
         f'missing = [n for n in {list(ENTRY_POINTS)!r} if not hasattr(ext, n)]\n'
         'assert not missing, f"the extension lacks {missing}"\n'
         'reason = unavailable_reason("cuda", "cuda")\n'
         'assert reason is None, reason\n'
         'print("imported", ext.__file__)'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    print(check.stdout, check.stderr)
    if check.returncode != 0:
        return dict(status='failed', figures=figures,
                    error='vssm_mm._C was built but does not import: ' + check.stderr[-3000:])
    spills = sum(k.get('spill_stores', 0) + k.get('spill_loads', 0) for k in kernels)
    regs = [k['registers'] for k in kernels if 'registers' in k]
    summary = (f'sm_{arch.replace(".", "")} in {build_seconds:.0f} s, {len(kernels)} kernels, '
               f'registers {min(regs, default=0)}-{max(regs, default=0)}, '
               f'{spills} spill bytes in all; imports')
    return dict(status='passed', summary=summary, figures=figures)


# ----------------------------------------------------------------------------------------------
# b. tests


def parse_junit(path):
    import xml.etree.ElementTree as ET
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    failed = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter('testcase'):
            for kind in ('failure', 'error'):
                node = case.find(kind)
                if node is not None:
                    message = (node.get('message') or node.text or '').strip().splitlines()
                    failed.append(dict(test=f"{case.get('classname')}::{case.get('name')}",
                                       kind=kind, message=(message[0] if message else '')[:300]))
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    return counts, failed


def _has_module(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def stage_tests(args, budget):
    if not _has_module('pytest'):
        return dict(status='failed', error='pytest is not installed: carry its wheels '
                    '(VSSM_WHEELS_WITH_PYTEST=1 bash tools/gpu_check_wheels.sh)')
    junit = Path(tempfile.mkdtemp(prefix='vssm_gpu_check_tests_')) / 'junit.xml'
    files = DRY_TEST_FILES if args.dry_run else TEST_FILES
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rfE',
           f'--junitxml={junit}', *files]
    env = dict(os.environ)
    env.pop('VSSM_SCAN_BACKEND', None)
    if not args.dry_run:
        env['VSSM_REQUIRE_GPU'] = '1'
        if _has_module('xdist'):  # parallel Triton/inductor compiles
            cmd += ['-n', '4']
        if _has_module('pytest_timeout'):
            cmd += ['--timeout', '90']
    print('$', shlex.join(cmd), flush=True)
    proc = run_command(cmd, budget.left(), capture=False, cwd=REPO, env=env)
    if proc.returncode is None:
        return dict(status='failed', error='the tests did not finish in the stage time limit '
                    '(see gpu_check.log for the last ones that ran)')
    if not junit.is_file():
        return dict(status='failed', error=f'pytest wrote no report (exit {proc.returncode})')
    counts, failed = parse_junit(junit)
    figures = dict(counts, files=files, require_gpu=not args.dry_run, failed_tests=failed[:40])
    summary = (f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} "
               f"errors, {counts['skipped']} skipped of {counts['tests']}")
    ok = proc.returncode == 0 and not failed and counts['tests'] > 0
    if not args.dry_run and counts['skipped']:
        # Only cpu_only tests may skip under VSSM_REQUIRE_GPU=1.
        summary += ' (skips: the CPU-only interpreter runs)'
    return dict(status='passed' if ok else 'failed', summary=summary, figures=figures,
                error=None if ok else f'pytest exit {proc.returncode}: ' +
                '; '.join(f['test'] for f in failed[:10]))


# ----------------------------------------------------------------------------------------------
# c. sanitizer

SANITIZER_SUMMARY = re.compile(r'ERROR SUMMARY: (\d+) errors?')
RACECHECK_SUMMARY = re.compile(r'RACECHECK SUMMARY: (\d+) hazards? displayed '
                               r'\((\d+) errors?, (\d+) warnings?\)')


def find_sanitizer():
    found = shutil.which('compute-sanitizer')
    if found:
        return found
    for root in (os.environ.get('CUDA_HOME'), '/usr/local/cuda'):
        if root and osp.isfile(osp.join(root, 'bin', 'compute-sanitizer')):
            return osp.join(root, 'bin', 'compute-sanitizer')
    return None


def stage_sanitizer(args, budget):
    driver = [sys.executable, str(TOOLS / 'gpu_check_sanitize.py')]
    if args.dry_run:
        proc = run_command(driver + ['--backend', 'reference', '--device', 'cpu'],
                           budget.left(), cwd=REPO)
        print(proc.stdout, proc.stderr)
        if proc.returncode != 0:
            return dict(status='failed', error='the sanitizer driver failed on the CPU: ' +
                        proc.stderr[-2000:])
        return dict(status='skipped', reason='dry run: compute-sanitizer needs a GPU (its '
                    'driver ran on the CPU with the reference backend: ' +
                    proc.stdout.strip().splitlines()[-1] + ')')
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return dict(status='failed', error='compute-sanitizer not found (PATH, $CUDA_HOME/bin)')
    help_text = subprocess.run([sanitizer, '--help'], capture_output=True, text=True).stdout
    # Only our kernels: torch's own would multiply the sanitizer's time.
    only_ours = ['--kernel-name', 'kns=selective_scan'] if '--kernel-name' in help_text else []
    figures, errors = {}, []
    for tool in ('memcheck', 'racecheck'):
        if budget.left() < 5:
            figures[tool] = dict(status='not run', reason='stage time limit')
            errors.append(f'{tool}: not run (time limit)')
            continue
        env = dict(os.environ)
        if tool == 'memcheck':
            env['PYTORCH_NO_CUDA_MEMORY_CACHING'] = '1'  # out-of-bounds past each tensor
        start = _now()
        for kernel_filter in ([only_ours, []] if only_ours else [[]]):
            cmd = [sanitizer, '--tool', tool, '--error-exitcode', '3', '--print-limit', '20',
                   *kernel_filter, *driver]
            print('$', shlex.join(cmd), flush=True)
            proc = run_command(cmd, budget.left() - 2, cwd=REPO, env=env)
            if proc.returncode is None or 'case (' in proc.stdout:
                break
            # the driver never started: perhaps this sanitizer reads the filter differently
            print((proc.stdout + proc.stderr)[-5000:], '\nretrying without the kernel filter')
        only_ours = kernel_filter
        if proc.returncode is None:
            print((proc.stdout + proc.stderr)[-20000:])
            figures[tool] = dict(status='timed out', seconds=round(_now() - start, 1))
            errors.append(f'{tool}: timed out')
            continue
        out = proc.stdout + proc.stderr
        print(out[-100000:])
        total = SANITIZER_SUMMARY.search(out)
        race = RACECHECK_SUMMARY.search(out)
        ran = re.search(r'ran (\d+) cases', out)
        entry = dict(exit_code=proc.returncode, seconds=round(_now() - start, 1),
                     errors=int(total.group(1)) if total else None,
                     cases=int(ran.group(1)) if ran else 0,
                     kernel_filter=' '.join(only_ours) or None)
        if race:
            entry.update(hazards=int(race.group(1)), race_errors=int(race.group(2)),
                         race_warnings=int(race.group(3)))
        ok = proc.returncode == 0 and entry['errors'] == 0 and entry['cases'] > 0
        entry['status'] = 'passed' if ok else 'failed'
        if not ok:
            errors.append(f"{tool}: exit {proc.returncode}, {entry['errors']} errors, "
                          f"{entry['cases']} cases ran")
        figures[tool] = entry
    summary = ', '.join(f"{tool} {f.get('errors', '?')} errors over {f.get('cases', 0)} cases"
                        for tool, f in figures.items() if 'cases' in f)
    return dict(status='failed' if errors else 'passed', summary=summary, figures=figures,
                error='; '.join(errors) or None)


def can_measure(row, backend, device, budget, seconds):
    """False (and the row says why) when ``backend`` cannot run on ``device`` or fewer than
    ``seconds`` of the stage's budget are left."""
    from vssm_mm.ops.selective_scan.backends import unavailable_reason
    reason = unavailable_reason(backend, device)
    if reason:
        row.update(status='not available', reason=reason)
    elif budget.left() < seconds:
        row.update(status='not run', reason='stage time limit')
    return row.get('status') is None


def measured_rows_result(rows, dry_run, what, keys, figures):
    """A measuring stage's result: passed when something was measured, nothing failed and (on
    a GPU) every backend was available; rows cut by the time limit are reported, not failed."""
    by_status = {}
    for row in rows:
        by_status.setdefault(row['status'], []).append(row)
    failed = by_status.get('failed', [])
    if not dry_run:
        failed = failed + by_status.get('not available', [])
    measured = by_status.get('measured', [])
    summary = (f'{len(measured)} of {len(rows)} measured {what}; {len(failed)} failed, '
               f"{len(by_status.get('not run', []))} out of time")
    ok = measured and not failed
    error = None if ok else '; '.join(
        ' '.join(str(r[k]) for k in keys) + f": {r['reason']}" for r in failed[:8])
    return dict(status='passed' if ok else 'failed', summary=summary,
                figures=dict(figures, rows=rows), error=error or (None if ok else
                                                                  'nothing measured'))


# ----------------------------------------------------------------------------------------------
# d. operator

OPERATOR_DTYPES = [('fp32', 'fp32', False), ('bf16-in/fp32-out', 'bf16', True)]


def stage_operator(args, budget):
    import torch
    sys.path.insert(0, str(TOOLS))
    import benchmark_ops as bench
    from vssm_mm.ops.selective_scan import selective_scan
    device = _device(args.dry_run)
    batch = 1 if args.dry_run else args.batch
    peak = bench.peak_bandwidth(device)
    shapes = []
    for name, (channels, d_state, length, groups) in bench.FAMILY_SHAPES.items():
        if args.dry_run:  # tiny: a handful of channels, 64 tokens
            channels, length = max(groups, channels // 48 // groups * groups), 64
        shapes.append((name, channels, d_state, length, groups))
    warmup, repeat = (0, 1) if args.dry_run else (3, 10)
    rows = []
    # cuda and triton first at every shape, the (slow) plain-PyTorch baseline last
    plan = [(backend, shape, dtype, mode) for backend in SCAN_BACKENDS for shape in shapes
            for dtype in OPERATOR_DTYPES for mode in ('fwd', 'fwdbwd')]
    for backend, (name, channels, d_state, length, groups), (label, dtype, out32), mode in plan:
        row = dict(shape=name, backend=backend, dtype=label, mode=mode, batch=batch,
                   channels=channels, d_state=d_state, length=length, groups=groups)
        rows.append(row)
        if not can_measure(row, backend, device, budget, 3):
            continue
        try:
            inputs = bench.make_inputs(batch, channels, d_state, length, groups,
                                       bench.DTYPES[dtype], device)
            grad = torch.randn(batch, channels, length, device=device)
            if not out32:
                grad = grad.to(bench.DTYPES[dtype])
            tensors = list(inputs.values())

            def call():
                out = selective_scan(inputs['u'], inputs['delta'], inputs['A'], inputs['B'],
                                     inputs['C'], D=inputs['D'],
                                     delta_bias=inputs['delta_bias'], delta_softplus=True,
                                     out_float32=out32, backend=backend)
                if mode == 'fwdbwd':  # returned, never accumulated into .grad
                    torch.autograd.grad(out, tensors, grad)

            reps = (1, 3) if backend == 'reference' and not args.dry_run else (warmup, repeat)
            median, best = time_calls(call, device, *reps)
            nbytes = bench.compulsory_bytes(mode, batch, channels, d_state, length, groups,
                                            bench.DTYPES[dtype].itemsize, 4 if out32 else
                                            bench.DTYPES[dtype].itemsize)
            gbs = nbytes / median / 1e9
            row.update(status='measured', median_ms=_sig(median * 1e3),
                       min_ms=_sig(best * 1e3), achieved_gbs=_sig(gbs),
                       percent_of_peak=round(100 * gbs / peak, 1) if peak else None,
                       repeats=reps[1])
        except Exception as err:  # OOM or a kernel error: recorded, the next row runs
            row.update(status='failed', reason=f'{type(err).__name__}: {str(err)[:300]}')
        finally:
            inputs = grad = tensors = None
            _free_memory()
        print(json.dumps(row), flush=True)
        save_partial(args, dict(figures=dict(peak_gbs=peak, device=device, rows=rows)))
    return measured_rows_result(
        rows, args.dry_run, f'at batch {batch}, peak {peak or "?"} GB/s',
        ('backend', 'shape', 'dtype', 'mode'), dict(peak_gbs=peak, device=device))


# ----------------------------------------------------------------------------------------------
# e. models


def build_classifier(class_name, arch, num_classes=1000, probe_size=64, device='cpu'):
    """``class_name`` backbone (vssm_mm.models.backbones, needs torch and mmengine only) with
    global average pooling and a linear head over its last feature map."""
    import torch
    from torch import nn

    from vssm_mm.models import backbones
    backbone = getattr(backbones, class_name)(arch=arch).to(device)

    def pooled(x):
        feat = backbone(x)
        feat = feat[-1] if isinstance(feat, (tuple, list)) else feat
        if feat.dim() == 4:
            return feat.mean((2, 3))
        return feat.mean(1) if feat.dim() == 3 else feat

    with torch.no_grad():
        width = pooled(torch.zeros(1, 3, probe_size, probe_size, device=device)).shape[-1]

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(pooled(x))

    return Classifier().to(device)


def measure_model(model, device, batch, size, warmup, repeat, amp):
    import torch
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(1000, (batch, ), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    result = {}

    def infer():
        with torch.no_grad(), autocast:
            model(images)

    def train():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()

    for mode, step in (('inference', infer), ('train', train)):
        model.train(mode == 'train')
        if device == 'cuda':
            _free_memory()
            torch.cuda.reset_peak_memory_stats()
        median, best = time_calls(step, device, warmup, repeat)
        result[mode] = dict(images_per_s=round(batch / median, 2),
                            ms_per_step=round(median * 1e3, 2),
                            peak_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20)
                            if device == 'cuda' else None)
    optimizer.zero_grad(set_to_none=True)
    return result


def stage_models(args, budget):
    import torch
    device = _device(args.dry_run)
    # dry run: fp32 (bf16 autocast on a CPU is many times slower), one image of 64x64
    size, batch0, amp = (64, 1, False) if args.dry_run else (224, args.batch, True)
    warmup, repeat = (0, 1) if args.dry_run else (2, 5)
    torch.backends.cudnn.benchmark = not args.dry_run
    families = [f for f in FAMILY_MODELS if f[0] in args.families]
    rows = []
    for backend in SCAN_BACKENDS:
        for family, class_name, arch in families:
            row = dict(family=family, model=f'{class_name}({arch!r}) + linear head',
                       backend=backend, input=size, amp='bf16' if amp else None)
            rows.append(row)
            if not can_measure(row, backend, device, budget, 5):
                continue
            os.environ['VSSM_SCAN_BACKEND'] = backend
            batch, model = batch0, None
            try:
                torch.manual_seed(0)
                model = build_classifier(class_name, arch, device=device)
                row['params_m'] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
                while True:
                    try:
                        row.update(measure_model(model, device, batch, size, warmup, repeat,
                                                 amp=amp), batch=batch, status='measured')
                        break
                    except torch.cuda.OutOfMemoryError:
                        _free_memory()
                        if batch == 1:
                            raise
                        batch //= 2
            except Exception as err:
                row.update(status='failed', reason=f'{type(err).__name__}: {str(err)[:300]}')
            finally:
                model = None
                _free_memory()
            print(json.dumps(row), flush=True)
            save_partial(args, dict(figures=dict(device=device, rows=rows)))
    return measured_rows_result(rows, args.dry_run, f'(family, backend) at {size}x{size}',
                                ('family', 'backend'), dict(device=device))


STAGE_FUNCTIONS = dict(build=stage_build, tests=stage_tests, sanitizer=stage_sanitizer,
                       operator=stage_operator, models=stage_models)


def _write_json(path, data):
    """Write ``data`` to ``path`` atomically (a killed stage never leaves half a file)."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def save_partial(args, result):
    """What a stage has measured so far: the parent keeps it if the stage is killed."""
    _write_json(args.result, dict(result, status='partial'))


def run_stage_in_this_process(args):
    """Child process: run one stage, write its result as JSON to ``args.result``."""
    budget = Budget(args.stage_budget)
    try:
        result = STAGE_FUNCTIONS[args.stage](args, budget)
    except Exception:
        result = dict(status='failed', error=traceback.format_exc()[-4000:])
    _write_json(args.result, result)
    return 0 if result['status'] in ('passed', 'skipped') else 1


# ----------------------------------------------------------------------------------------------
# the parent: environment, stages as subprocesses, report

ENV_PROBE = """
import json, platform, sys
info = dict(python=platform.python_version())
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f'{p.major}.{p.minor}', sm_count=p.multi_processor_count,
                    gpu_memory_gib=round(p.total_memory / 2**30, 1))
except Exception as err:
    info['torch_error'] = repr(err)
for name in ('triton', 'mmengine', 'pytest'):
    try:
        info[name] = __import__(name).__version__
    except Exception:
        info[name] = None
print(json.dumps(info))
"""


def environment():
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                host_cpus=os.cpu_count(), platform=platform.platform())
    try:
        probe = subprocess.run([sys.executable, '-c', ENV_PROBE], capture_output=True,
                               text=True, timeout=120, cwd=REPO)
        info.update(json.loads(probe.stdout.strip().splitlines()[-1]))
    except Exception as err:
        info['probe_error'] = repr(err)
    smi = shutil.which('nvidia-smi')
    if smi:
        try:
            out = subprocess.run([smi, '--query-gpu=name,driver_version,memory.total',
                                  '--format=csv,noheader'], capture_output=True, text=True,
                                 timeout=30).stdout.strip().splitlines()
            if out:
                name, driver, memory = [s.strip() for s in out[0].split(',')]
                info.update(gpu_smi=name, driver=driver, gpu_memory_smi=memory)
        except Exception as err:
            info['nvidia_smi_error'] = repr(err)
    nvcc = shutil.which('nvcc')
    if nvcc:
        text = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
        found = re.search(r'release ([\d.]+)', text)
        info['nvcc'] = found.group(1) if found else text.strip()[-80:]
    return info


def run_stage(name, args, limit, log, work):
    result_file = work / f'{name}.json'
    cmd = [sys.executable, str(Path(__file__).resolve()), '--stage', name, '--result',
           str(result_file), '--stage-budget', str(max(limit - 10, 5)), '--batch',
           str(args.batch), '--families', ','.join(args.families)]
    if args.dry_run:
        cmd.append('--dry-run')
    if args.arch:
        cmd += ['--arch', args.arch]
    if args.jobs:
        cmd += ['--jobs', str(args.jobs)]
    env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONWARNINGS='ignore')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in env.get('PYTHONPATH', '')
                                                      .split(os.pathsep) if p])
    log.write(f'\n===== stage {LETTERS[name]}. {name} (time limit {limit:.0f} s) =====\n')
    log.flush()
    start = _now()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        proc.wait(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and everything it started
        proc.wait()
    seconds = round(_now() - start, 1)
    if timed_out:
        result = dict(status='failed', error=f'timed out after {limit:.0f} s (its time limit); '
                      'see gpu_check.log')
        if result_file.is_file():  # the figures measured before the limit
            result['figures'] = json.loads(result_file.read_text()).get('figures')
    elif result_file.is_file():
        result = json.loads(result_file.read_text())
        if result['status'] == 'partial':
            result.update(status='failed', error=f'the stage process died (exit '
                          f'{proc.returncode}) before it finished; see gpu_check.log')
    else:
        result = dict(status='failed', error=f'the stage process died (exit {proc.returncode})'
                      ' before reporting; see gpu_check.log')
    result.update(stage=name, id=LETTERS[name], seconds=seconds, time_limit_s=round(limit))
    return result


def _fmt(value, digits=1):
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:,.{digits}f}'
    return str(value)


def _headline(stage):
    """One line about a stage: its summary, its reason to skip, or the last line of its error."""
    text = stage.get('summary') or stage.get('reason')
    if not text:
        lines = (stage.get('error') or '').strip().splitlines()
        text = lines[-1] if lines else ''
    return text.replace('\n', ' ')


def render_markdown(report):
    env = report['environment']
    lines = [f"# vssm_mm GPU check{' (dry run on the CPU)' if report['dry_run'] else ''}", '',
             f"- date: {env.get('date')}",
             f"- GPU: {env.get('gpu') or env.get('gpu_smi') or 'none'}"
             f" (compute capability {env.get('capability', '-')}, "
             f"{env.get('gpu_memory_gib', '-')} GiB), driver {env.get('driver', '-')}",
             f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), triton "
             f"{env.get('triton')}, nvcc {env.get('nvcc', '-')}, Python {env.get('python')}, "
             f"mmengine {env.get('mmengine')}",
             f"- command: `{report['command']}`",
             f"- result: **{'PASSED' if report['passed'] else 'FAILED'}** in "
             f"{report['seconds']:.0f} s", '',
             '| stage | status | seconds (limit) | summary |', '| --- | --- | ---: | --- |']
    for stage in report['stages']:
        text = _headline(stage).replace('|', '/')[:400]
        lines.append(f"| {stage['id']}. {stage['stage']} | {stage['status']} | "
                     f"{_fmt(stage.get('seconds'))} ({stage.get('time_limit_s', '-')}) | {text} |")
    for stage in report['stages']:
        figures = stage.get('figures') or {}
        if stage.get('error') and stage['status'] != 'passed':
            lines += ['', f"## {stage['id']}. {stage['stage']}: error", '', '```',
                      str(stage['error'])[-3000:], '```']
        if stage['stage'] == 'build' and figures.get('kernels'):
            lines += ['', '## a. build: registers and spills per kernel (ptxas -v)', '',
                      '| kernel | arch | registers | spill stores | spill loads | stack | smem |',
                      '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
            for k in figures['kernels']:
                lines.append(f"| `{k['name']}` | {k['arch']} | {_fmt(k.get('registers'))} | "
                             f"{_fmt(k.get('spill_stores'))} | {_fmt(k.get('spill_loads'))} | "
                             f"{_fmt(k.get('stack_bytes'))} | {_fmt(k.get('smem_bytes'))} |")
        if stage['stage'] == 'tests' and figures.get('failed_tests'):
            lines += ['', '## b. tests: failures', '']
            lines += [f"- `{f['test']}` ({f['kind']}): {f['message']}"
                      for f in figures['failed_tests']]
        if stage['stage'] == 'sanitizer' and figures:
            lines += ['', '## c. sanitizer', '', '| tool | status | errors | cases | seconds |',
                      '| --- | --- | ---: | ---: | ---: |']
            for tool, f in figures.items():
                lines.append(f"| {tool} | {f.get('status')} | {_fmt(f.get('errors'))} | "
                             f"{_fmt(f.get('cases'))} | {_fmt(f.get('seconds'))} |")
        if stage['stage'] == 'operator' and figures.get('rows'):
            clock = ('CUDA-event timed calls after warm-up' if figures.get('device') == 'cuda'
                     else 'wall-clock timed calls on the CPU')
            lines += ['', f"## d. operator (peak {figures.get('peak_gbs') or '?'} GB/s; times "
                      f'are medians of {clock})', '',
                      '| shape | B x D x L, N, G | dtype | mode | backend | ms | GB/s | % peak |',
                      '| --- | --- | --- | --- | --- | ---: | ---: | ---: |']
            for r in figures['rows']:
                if r['status'] == 'not available':
                    continue
                shape = f"{r['batch']}x{r['channels']}x{r['length']}, {r['d_state']}, {r['groups']}"
                timing = (f"{_fmt(r.get('median_ms'), 3)} | {_fmt(r.get('achieved_gbs'))} | "
                          f"{_fmt(r.get('percent_of_peak'))}" if r['status'] == 'measured'
                          else f"{r['status']}: {r.get('reason', '')[:80]} | | ")
                lines.append(f"| {r['shape']} | {shape} | {r['dtype']} | {r['mode']} | "
                             f"{r['backend']} | {timing} |")
        if stage['stage'] == 'models' and figures.get('rows'):
            lines += ['', '## e. models (bf16 autocast; train = forward, loss, backward, SGD '
                      'step)', '',
                      '| family | model | backend | batch | infer img/s | train img/s | '
                      'infer peak MB | train peak MB |',
                      '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |']
            for r in figures['rows']:
                if r['status'] == 'not available':
                    continue
                if r['status'] != 'measured':
                    lines.append(f"| {r['family']} | {r['model']} | {r['backend']} | "
                                 f"{r['status']}: {r.get('reason', '')[:80]} | | | | |")
                    continue
                inf, tr = r['inference'], r['train']
                lines.append(f"| {r['family']} | {r['model']} | {r['backend']} | {r['batch']} | "
                             f"{_fmt(inf['images_per_s'])} | {_fmt(tr['images_per_s'])} | "
                             f"{_fmt(inf['peak_memory_mb'])} | {_fmt(tr['peak_memory_mb'])} |")
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--out', default='gpu_check_report',
                        help='folder for report.json, report.md and gpu_check.log')
    parser.add_argument('--dry-run', action='store_true',
                        help='the same stages on the CPU with tiny shapes')
    parser.add_argument('--stages', default=','.join(STAGES),
                        help=f"comma list of {', '.join(STAGES)} (default: all)")
    parser.add_argument('--arch', help='TORCH_CUDA_ARCH_LIST for the build (default: the GPU\'s)')
    parser.add_argument('--jobs', type=int, help='MAX_JOBS of the build (default: CPU count)')
    parser.add_argument('--batch', type=int, default=128, help='batch of stages d and e')
    parser.add_argument('--families', default=','.join(f[0] for f in FAMILY_MODELS),
                        help='comma list of the model families stage e measures (default: all)')
    parser.add_argument('--limits', default='', metavar='STAGE=SECONDS,...',
                        help='override stage time limits, e.g. build=300 on a machine with '
                        'few CPU cores')
    parser.add_argument('--budget', type=float, default=None,
                        help=f'seconds for the whole run (default {TOTAL_BUDGET}; a dry run '
                        'has none)')
    # one stage in a child process
    parser.add_argument('--stage', choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    parser.add_argument('--stage-budget', type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(',') if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f'unknown stages {unknown}; choose from {", ".join(STAGES)}')
    args.stage_list = stages
    try:
        args.limits = {k.strip(): float(v) for k, v in
                       (item.split('=') for item in args.limits.split(',') if item.strip())}
    except ValueError:
        parser.error('--limits: write STAGE=SECONDS,... e.g. build=300,tests=200')
    if any(k not in STAGES for k in args.limits):
        parser.error(f'--limits: stages are {", ".join(STAGES)}')
    args.families = [f.strip() for f in args.families.split(',') if f.strip()]
    known = [f[0] for f in FAMILY_MODELS]
    if not args.families or any(f not in known for f in args.families):
        parser.error(f'--families: choose from {", ".join(known)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.stage:
        return run_stage_in_this_process(args)
    start = _now()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='vssm_gpu_check_'))
    limits = dict(DRY_TIME_LIMITS if args.dry_run else TIME_LIMITS, **args.limits)
    budget = args.budget or (None if args.dry_run else TOTAL_BUDGET)
    command = shlex.join([osp.basename(sys.executable)] + sys.argv)
    print(f'[gpu_check] {"dry run, " if args.dry_run else ""}stages {", ".join(args.stage_list)}'
          f'; log: {out / "gpu_check.log"}', flush=True)
    env_info = environment()
    if not args.dry_run and not env_info.get('gpu'):
        print('[gpu_check] torch sees no CUDA GPU: every GPU stage will fail; use --dry-run '
              'to check the script on a CPU', flush=True)
    stages = []
    with open(out / 'gpu_check.log', 'w') as log:
        log.write(f'command: {command}\nenvironment: {json.dumps(env_info)}\n')
        for name in STAGES:
            if name not in args.stage_list:
                continue
            limit = limits[name]
            if budget is not None:
                limit = min(limit, budget - (_now() - start))
            if limit < 5:
                result = dict(stage=name, id=LETTERS[name], status='failed', seconds=0,
                              time_limit_s=0, error='not run: the whole run\'s budget is spent')
            else:
                print(f'[gpu_check] {LETTERS[name]}. {name} (limit {limit:.0f} s) ...',
                      flush=True)
                result = run_stage(name, args, limit, log, work)
            stages.append(result)
            print(f"[gpu_check] {LETTERS[name]}. {name}: {result['status']} in "
                  f"{result['seconds']} s: {_headline(result)[:300]}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    passed = all(s['status'] in ('passed', 'skipped') for s in stages)
    report = dict(command=command, dry_run=args.dry_run, environment=env_info,
                  seconds=round(_now() - start, 1), passed=passed, stages=stages)
    report['stages'].append(dict(stage='report', id='f', status='passed', seconds=0,
                                 summary=f'report.json, report.md, gpu_check.log in {out}'))
    (out / 'report.json').write_text(json.dumps(report, indent=1, default=str) + '\n')
    markdown = render_markdown(report)
    (out / 'report.md').write_text(markdown)
    print(markdown)
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
