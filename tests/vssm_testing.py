"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def has_mm_stack(*packages):
    """True when mmcv with compiled ops and the given mm* packages import.

    With VSSM_REQUIRE_MM_STACK=1 (set by `make test`, which installs the stack first) a
    missing package is an error instead of a reason to skip, so CI cannot go green by skipping.
    """
    try:
        import mmcv.ops  # noqa: F401
        for name in packages:
            __import__(name)
    except Exception as err:  # ImportError, or the version asserts of mmdet/mmseg
        if os.environ.get('VSSM_REQUIRE_MM_STACK') == '1':
            raise RuntimeError(f'the OpenMMLab stack is required here but failed to import: {err!r}')
        return False
    return True


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_tool(args, env=None, timeout=600, check=True):
    """Run a command from the repository root with the test interpreter; return the result."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault('PYTHON', sys.executable)
    full_env['PYTHONWARNINGS'] = 'ignore'
    if args and args[0].endswith('.py'):
        args = [sys.executable] + list(args)
    result = subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'command failed ({result.returncode}): {" ".join(map(str, args))}\n'
                             f'--- stdout ---\n{result.stdout[-6000:]}\n'
                             f'--- stderr ---\n{result.stderr[-6000:]}')
    return result
