"""tools/gpu_check.py: its dry run on the CPU (every stage, a report), its parsers, its time
limits, and the VSSM_REQUIRE_GPU switch of tests/conftest.py."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types

import pytest
from vssm_testing import REPO, REQUIRE_GPU_ENV, load_tool, run_tool

# Imported by a sitecustomize in the dry run's processes: the GPU machine has torch and
# mmengine but none of the OpenMMLab task packages, so the check must not need them.
BLOCK_TASK_PACKAGES = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmcv', 'mmdet', 'mmseg', 'mmpretrain'):
            raise ImportError(f'{name} is hidden: the GPU check must run without it')
sys.meta_path.insert(0, _Block())
'''


def _module():
    return load_tool('gpu_check')


def test_dry_run_reports_every_stage(tmp_path):
    pytest.importorskip('mmengine', reason='the backbones need mmengine')
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(BLOCK_TASK_PACKAGES)
    out = tmp_path / 'report'
    inherited = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    pythonpath = os.pathsep.join([str(site), str(REPO)] + inherited)
    hidden = subprocess.run([sys.executable, '-c', 'import mmcv'], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=pythonpath))
    assert 'is hidden' in hidden.stderr  # the blocker is active in every child process
    result = run_tool(['tools/gpu_check.py', '--dry-run', '--out', str(out), '--families',
                       'efficientvmamba'], env={'PYTHONPATH': pythonpath}, timeout=1200)
    assert 'PASSED' in result.stdout
    report = json.loads((out / 'report.json').read_text())
    stages = {s['stage']: s for s in report['stages']}
    assert [s['id'] for s in report['stages']] == list('abcdef')
    assert list(stages) == ['build', 'tests', 'sanitizer', 'operator', 'models', 'report']
    assert report['dry_run'] and report['passed']
    assert stages['build']['status'] in ('passed', 'skipped')
    for stage in report['stages']:
        assert stage['status'] in ('passed', 'skipped'), stage
        assert stage['seconds'] <= stage.get('time_limit_s', 0) or stage['stage'] == 'report'
    tests = stages['tests']['figures']
    assert tests['tests'] >= 150 and tests['failures'] == tests['errors'] == 0
    assert tests['passed'] >= 4 and not tests['require_gpu']
    sanitizer = stages['sanitizer']
    assert sanitizer['status'] == 'skipped' and 'dry run' in sanitizer['reason']
    assert 'ran 8 cases' in sanitizer['reason']
    rows = stages['operator']['figures']['rows']
    assert len(rows) == 3 * 5 * 2 * 2  # backends x family shapes x dtypes x modes
    measured = [r for r in rows if r['status'] == 'measured']
    assert {r['backend'] for r in measured} == {'reference'} and len(measured) == 20
    assert {(r['dtype'], r['mode']) for r in measured} == {
        (d, m) for d in ('fp32', 'bf16-in/fp32-out') for m in ('fwd', 'fwdbwd')}
    assert {r['d_state'] for r in measured} == {1, 16}
    assert all(r['median_ms'] > 0 and r['achieved_gbs'] > 0 for r in measured)
    assert all('CUDA' in r['reason'] or 'Triton' in r['reason'] for r in rows
               if r['status'] == 'not available')
    models = stages['models']['figures']['rows']
    assert [(r['family'], r['backend'], r['status']) for r in models] == [
        ('efficientvmamba', 'cuda', 'not available'),
        ('efficientvmamba', 'triton', 'not available'),
        ('efficientvmamba', 'reference', 'measured')]
    measured = models[-1]
    assert measured['inference']['images_per_s'] > 0 and measured['train']['images_per_s'] > 0
    markdown = (out / 'report.md').read_text()
    for heading in ('| a. build |', '| b. tests |', '| c. sanitizer | skipped |',
                    '| d. operator | passed |', '| e. models | passed |', '| f. report |',
                    '| efficientvmamba | EfficientVMamba'):
        assert heading in markdown
    assert sorted(p.name for p in out.iterdir()) == ['gpu_check.log', 'report.json',
                                                     'report.md']


def test_stage_past_its_time_limit_is_cut(tmp_path):
    check = _module()
    args = check.parse_args(['--dry-run', '--stages', 'models'])
    with open(tmp_path / 'log', 'w') as log:
        result = check.run_stage('models', args, 2, log, tmp_path)
    assert result['status'] == 'failed' and 'timed out after 2 s' in result['error']
    assert result['seconds'] < 30


PTXAS_OUTPUT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z4kernILi128EEvPfi' for 'sm_90'
ptxas info    : Function properties for _Z4kernILi128EEvPfi
    256 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 256 bytes cumulative stack size, 512 bytes smem
ptxas info    : Compile time = 46.319 ms
ptxas info    : Compiling entry function '_Z4kernILi64EEvPfi' for 'sm_90'
ptxas info    : Function properties for _Z4kernILi64EEvPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers
"""


def test_ptxas_report_parsing():
    kernels = _module().parse_ptxas(PTXAS_OUTPUT)
    assert [(k['arch'], k['registers'], k['spill_stores'], k['spill_loads'], k['stack_bytes'],
             k['smem_bytes']) for k in kernels] == [('sm_90', 32, 8, 12, 256, 512),
                                                    ('sm_90', 40, 0, 0, 0, 0)]
    if shutil.which('c++filt'):
        assert kernels[0]['name'] == 'void kern<128>(float*, int)'


def test_ptxas_parsing_of_real_nvcc_output(tmp_path):
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        pytest.skip('needs nvcc')
    source = tmp_path / 'k.cu'
    source.write_text('template <int N> __global__ void k(float *x) { __shared__ float s[N]; '
                      's[threadIdx.x % N] = x[threadIdx.x]; __syncthreads(); '
                      'x[threadIdx.x] = s[(threadIdx.x + 1) % N]; }\n'
                      'template __global__ void k<96>(float *);\n')
    proc = subprocess.run([nvcc, '-c', '-arch=sm_90', '-Xptxas', '-v', str(source), '-o',
                           str(tmp_path / 'k.o')], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (kernel, ) = _module().parse_ptxas(proc.stdout + proc.stderr)
    assert kernel['arch'] == 'sm_90' and kernel['smem_bytes'] == 96 * 4
    assert kernel['registers'] > 0 and kernel['spill_stores'] == kernel['spill_loads'] == 0


def test_junit_and_sanitizer_summaries(tmp_path):
    check = _module()
    junit = tmp_path / 'junit.xml'
    junit.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="ops.a" name="t1"/>'
        '<testcase classname="ops.a" name="t2"><failure message="assert 1 == 2">x</failure>'
        '</testcase><testcase classname="ops.a" name="t3"><error message="boom"/></testcase>'
        '<testcase classname="ops.a" name="t4"><skipped message="no"/></testcase>'
        '</testsuite></testsuites>')
    counts, failed = check.parse_junit(junit)
    assert counts == dict(tests=4, failures=1, errors=1, skipped=1, passed=1)
    assert failed == [dict(test='ops.a::t2', kind='failure', message='assert 1 == 2'),
                      dict(test='ops.a::t3', kind='error', message='boom')]
    assert check.SANITIZER_SUMMARY.search('========= ERROR SUMMARY: 0 errors').group(1) == '0'
    race = check.RACECHECK_SUMMARY.search(
        '========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)')
    assert race.groups() == ('3', '1', '2')


def _report(item_markers, env, monkeypatch, longrepr=('f.py', 1, 'Skipped: needs a CUDA GPU')):
    """Run conftest's makereport hook on a skipped test report."""
    spec = importlib.util.spec_from_file_location('_conftest', REPO / 'tests' / 'conftest.py')
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    if env:
        monkeypatch.setenv(REQUIRE_GPU_ENV, '1')
    else:
        monkeypatch.delenv(REQUIRE_GPU_ENV, raising=False)
    item = types.SimpleNamespace(get_closest_marker=lambda name: name in item_markers or None)
    report = types.SimpleNamespace(skipped=True, outcome='skipped', longrepr=longrepr)
    gen = conftest.pytest_runtest_makereport(item, None)
    next(gen)
    with pytest.raises(StopIteration):
        gen.send(types.SimpleNamespace(get_result=lambda: report))
    return report


def test_require_gpu_turns_skips_into_failures(monkeypatch):
    report = _report(set(), env=True, monkeypatch=monkeypatch)
    assert report.outcome == 'failed' and 'needs a CUDA GPU' in report.longrepr
    assert 'VSSM_REQUIRE_GPU=1' in report.longrepr
    assert _report(set(), env=False, monkeypatch=monkeypatch).outcome == 'skipped'
    assert _report({'cpu_only'}, env=True, monkeypatch=monkeypatch).outcome == 'skipped'


@pytest.mark.cpu_only
def test_require_gpu_without_a_gpu_stops_the_session(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           'tests/ops/test_selective_scan_cuda.py', '-k', 'chunk_plan'],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **{REQUIRE_GPU_ENV: '1'}))
    assert proc.returncode != 0
    assert 'sees no CUDA device' in proc.stdout + proc.stderr


@pytest.mark.cpu_only
def test_require_gpu_in_a_real_session(tmp_path):
    """A pytest session that believes it has a GPU but lacks the extension: the CUDA test
    fails instead of skipping, the CPU-only check still passes."""
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    (tmp_path / 'pretend_gpu.py').write_text('import torch\n'
                                             'torch.cuda.is_available = lambda: True\n')
    inherited = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)] + inherited),
               **{REQUIRE_GPU_ENV: '1'})
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           '-p', 'pretend_gpu', 'tests/ops/test_selective_scan_cuda.py', '-k',
                           'chunk_plan'], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert 'VSSM_REQUIRE_GPU=1 turns skips into failures' in proc.stdout
    assert '1 passed' in proc.stdout and ('1 error' in proc.stdout or '1 failed' in proc.stdout)
