"""tools/benchmark_ops.py: runs, reports speed-ups and memory traffic."""
import importlib.util
import json

import pytest

from vssm_testing import REPO, run_tool


def _module():
    spec = importlib.util.spec_from_file_location('benchmark_ops',
                                                  REPO / 'tools' / 'benchmark_ops.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compulsory_bytes():
    bench = _module()
    # batch 2, 8 channels, N 4, L 10, 2 groups, bf16 in, fp32 out
    rows, bc = 2 * 8 * 10, 2 * 2 * 4 * 10
    forward = rows * (2 * 2 + 4) + 2 * bc * 2
    assert bench.compulsory_bytes('fwd', 2, 8, 4, 10, 2, 2, 4) == forward
    backward = rows * (2 * 2 + 4) + 2 * bc * 2 + rows * 2 * 2 + 2 * bc * 2
    assert bench.compulsory_bytes('fwdbwd', 2, 8, 4, 10, 2, 2, 4) == forward + backward
    assert bench.peak_bandwidth('cpu') is None and bench.peak_bandwidth('cpu', 100.0) == 100.0


def test_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / 'rows.json'
    result = run_tool(['tools/benchmark_ops.py', '--backends', 'naive,reference,cuda',
                       '--channels', '8', '--d-state', '1,4', '--length', '40', '--groups', '2',
                       '--warmup', '0', '--repeat', '1', '--threads', '1', '--json', str(out)])
    assert 'cuda: skipped from here on' in result.stdout  # CPU tensors: a clear reason
    rows = json.loads(out.read_text())
    assert {(r['shape'], r['mode'], r['backend']) for r in rows} == {
        (f'D8_N{n}_L40', mode, backend) for n in (1, 4) for mode in ('fwd', 'fwdbwd')
        for backend in ('naive', 'reference')}
    for row in rows:
        assert row['min_ms'] > 0 and row['achieved_gbs'] > 0
        if row['backend'] == 'naive':
            assert row['speedup_vs_naive'] == 1.0


def test_repeats_do_not_accumulate_gradients():
    bench = _module()
    inputs = bench.make_inputs(1, 4, 2, 9, 2, bench.DTYPES['fp32'], 'cpu')
    grad = bench.torch.ones(1, 4, 9)
    first = bench.run_once('reference', inputs, 'fwdbwd', grad)
    second = bench.run_once('reference', inputs, 'fwdbwd', grad)
    assert all(t.grad is None for t in inputs.values())
    assert len(first) == len(inputs)
    for a, b in zip(first, second):
        assert bench.torch.equal(a, b)


def test_cpu_lanes_runs_the_cpu_backend_with_row_kernels_off(monkeypatch):
    ext = pytest.importorskip('vssm_mm._C_cpu')
    bench = _module()
    calls = []
    original = ext.set_row_kernels
    monkeypatch.setattr(ext, 'set_row_kernels', lambda on: (calls.append(on), original(on)))
    inputs = bench.make_inputs(1, 16, 16, 70, 2, bench.DTYPES['fp32'], 'cpu')
    grad = bench.torch.ones(1, 16, 70)
    lanes = bench.run_once('cpu-lanes', inputs, 'fwdbwd', grad)
    assert calls == [False, True] and ext.row_kernels()
    rows = bench.run_once('cpu', inputs, 'fwdbwd', grad)
    for got, want in zip(lanes, rows):
        assert (got - want).abs().max() <= 1e-4 * want.abs().max() + 1e-6


def test_cpu_isa_times_the_named_instruction_set(tmp_path):
    ext = pytest.importorskip('vssm_mm._C_cpu')
    isa = ext.available_isas()[-1]  # the portable build, always there
    result = run_tool(['tools/benchmark_ops.py', '--backends', 'cpu', '--channels', '8',
                       '--d-state', '16', '--length', '40', '--groups', '2', '--warmup', '0',
                       '--repeat', '1', '--threads', '1', '--cpu-isa', isa])
    assert f'cpu_isa={isa}' in result.stdout
    bad = run_tool(['tools/benchmark_ops.py', '--backends', 'cpu', '--cpu-isa', 'sse9'],
                   check=False)
    assert bad.returncode != 0 and "instruction set 'sse9' is not available" in bad.stderr
