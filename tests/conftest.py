import subprocess
import sys

import pytest
from vssm_testing import REPO, REQUIRE_GPU_ENV, gpu_required, missing_gpu_reason


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'cpu_only: only meaningful without a GPU (may skip under VSSM_REQUIRE_GPU=1)')


def pytest_sessionstart(session):
    if gpu_required():
        reason = missing_gpu_reason()
        if reason:
            raise pytest.UsageError(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under VSSM_REQUIRE_GPU=1 a skipped test (not marked cpu_only) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not gpu_required() or item.get_closest_marker('cpu_only'):
        return
    if hasattr(report, 'wasxfail'):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = 'failed'
    report.longrepr = f'{REQUIRE_GPU_ENV}=1 turns skips into failures; this test skipped: {reason}'


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A tiny generated dataset in all three layouts (cls/, coco/, ade/)."""
    out = tmp_path_factory.mktemp('demo_data')
    subprocess.run([sys.executable, str(REPO / 'tools' / 'make_demo_data.py'), '--out', str(out),
                    '--num-train', '8', '--num-val', '4', '--size', '96', '72', '--force'],
                   check=True, capture_output=True)
    return out
