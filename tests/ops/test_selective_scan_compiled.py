"""The reference backend's opt-in compiled path ($VSSM_SCAN_COMPILE=1)."""
import shutil
import warnings

import pytest
import torch
from ops.test_selective_scan import REL_TOL, assert_close, make_inputs, run

from vssm_mm.ops.selective_scan import reference, selective_scan, selective_scan_naive

pytestmark = pytest.mark.skipif(
    shutil.which('c++') is None and shutil.which('g++') is None,
    reason='torch.compile (inductor) needs a C++ compiler')


@pytest.fixture
def compiled(monkeypatch):
    """Compiled path on for every fp32 CPU call, fresh compile state."""
    monkeypatch.setenv(reference.COMPILE_ENV, '1')
    monkeypatch.setattr(reference, 'COMPILE_MIN_ELEMENTS', 0)
    monkeypatch.setattr(reference, '_compiled', {})
    monkeypatch.setattr(reference, '_compile_state', {'works': None})


@pytest.mark.parametrize('length,with_z,delta_ratio', [(37, True, 2),
                                                       (64, False, 1)])
def test_compiled_matches_naive(compiled, length, with_z, delta_ratio,
                                monkeypatch):
    # Small chunks: several compiled calls per saved chunk (recomputed in
    # the backward) and several chunks; 37 tokens pad the last call.
    monkeypatch.setattr(reference, 'DEFAULT_CHUNK_ELEMENTS', 2 * 8 * 4 * 32)
    inputs = make_inputs(length=length, with_z=with_z,
                         delta_ratio=delta_ratio)
    expected, out_grad, last_grad = run(selective_scan_naive, inputs)
    actual, _, _ = run(selective_scan, inputs, out_grad, last_grad,
                       backend='reference')
    assert reference._compile_state['works'] is True
    assert_close(actual, expected, REL_TOL[torch.float32])


def test_compile_failure_falls_back_to_eager(compiled, monkeypatch):
    def broken(name):
        def fail(*args):
            raise RuntimeError('no C++ compiler')
        return fail

    monkeypatch.setattr(reference, '_compiled_core', broken)
    inputs = make_inputs(length=20)
    expected, out_grad, last_grad = run(selective_scan_naive, inputs)
    with pytest.warns(RuntimeWarning, match='torch.compile failed'):
        actual, _, _ = run(selective_scan, inputs, out_grad, last_grad,
                           backend='reference')
    assert reference._compile_state['works'] is False
    assert_close(actual, expected, REL_TOL[torch.float32])
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # warned once only
        run(selective_scan, inputs, out_grad, last_grad, backend='reference')
