import os
import pickle

import numpy as np
import pytest
import torch

from vssm_mm.checkpoint import UnsafeCheckpointError, safe_load


class _RunsShell:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_refuses_os_system(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'payload': _RunsShell(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    message = str(err.value)
    assert 'posix.system' in message or 'os.system' in message
    assert str(path) in message
    assert 'VSSM_TRUST_CHECKPOINTS' in message
    assert not marker.exists()


def test_refuses_legacy_format_payload(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil_legacy.pth'
    torch.save({'x': _RunsShell(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(pickle.UnpicklingError):
        safe_load(path)
    assert not marker.exists()


def test_trust_opt_in(tmp_path, monkeypatch):
    path = tmp_path / 'custom.pth'
    torch.save({'obj': pytest.approx(1.0)}, path)  # an arbitrary class
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    assert safe_load(path, trust=True)['obj'] == 1.0
    monkeypatch.setenv('VSSM_TRUST_CHECKPOINTS', '1')
    assert safe_load(path)['obj'] == 1.0


def test_loads_tensors_numpy_and_official_config_objects(tmp_path):
    import argparse
    import types
    import sys

    # A stand-in for yacs.config.CfgNode pickled by the official trainers: a dict subclass
    # with its own attributes, defined in a module that need not be importable at load time.
    yacs = types.ModuleType('yacs')
    yacs_config = types.ModuleType('yacs.config')

    class CfgNode(dict):
        pass

    CfgNode.__module__ = 'yacs.config'
    CfgNode.__qualname__ = 'CfgNode'
    yacs_config.CfgNode = CfgNode
    sys.modules['yacs'], sys.modules['yacs.config'] = yacs, yacs_config
    try:
        cfg = CfgNode(MODEL=CfgNode(NAME='vssm', DEPTHS=[2, 2, 9, 2]), TRAIN=CfgNode(EPOCHS=300))
        cfg.__dict__['_immutable'] = True
        path = tmp_path / 'official.pth'
        torch.save({'model': {'w': torch.arange(4.0)}, 'config': cfg, 'max_accuracy': 82.5,
                    'args': argparse.Namespace(lr=1e-3), 'np': np.arange(3),
                    'np_scalar': np.float64(2.5), 'epoch': 299}, path)
    finally:
        del sys.modules['yacs'], sys.modules['yacs.config']
    ckpt = safe_load(path)
    assert torch.equal(ckpt['model']['w'], torch.arange(4.0))
    assert isinstance(ckpt['config'], dict)
    assert ckpt['config']['MODEL']['DEPTHS'] == [2, 2, 9, 2]
    assert ckpt['config'].TRAIN.EPOCHS == 300
    assert ckpt['args'].lr == 1e-3
    assert np.array_equal(ckpt['np'], np.arange(3)) and ckpt['np_scalar'] == 2.5


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        safe_load(tmp_path / 'nope.pth')


def test_mmengine_loader_is_routed(tmp_path):
    mmengine = pytest.importorskip('mmengine')  # noqa: F841
    import vssm_mm  # noqa: F401  (installs the loader)
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

    from mmengine.logging.history_buffer import HistoryBuffer
    path = tmp_path / 'mmengine_style.pth'
    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({'state_dict': {'w': torch.ones(1)}, 'message_hub': {'log_scalars': {'loss': buf}}},
               path)
    ckpt = _load_checkpoint(str(path), map_location='cpu')
    assert ckpt['message_hub']['log_scalars']['loss'].current() == 1.5
    evil = tmp_path / 'evil.pth'
    torch.save({'x': _RunsShell(tmp_path / 'pwned')}, evil)
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(str(evil))
    assert not (tmp_path / 'pwned').exists()


def test_getattr_is_restricted(tmp_path):
    pytest.importorskip('mmengine')

    class _GetattrEscape:
        def __reduce__(self):
            return (getattr, (torch.Tensor, '__subclasses__'))

    path = tmp_path / 'escape.pth'
    torch.save({'x': _GetattrEscape()}, path)
    with pytest.raises(UnsafeCheckpointError, match='getattr'):
        safe_load(path)
