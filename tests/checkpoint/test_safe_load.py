import os
import pickle
from typing import Tuple

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


# -- containers that reach code before any unpickler ------------------------------------------

@pytest.fixture
def jit_load_spy(monkeypatch):
    """Records every call of torch.jit.load (which runs an archive's compiled code)."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError('torch.jit.load was reached: the archive\'s code would run')

    monkeypatch.setattr(torch.jit, 'load', spy)
    return calls


def _torchscript_archive(path):
    class WithState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.ones(2)

        @torch.jit.export
        def __getstate__(self):
            return (self.scale, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, bool]):
            # Code that runs while the archive loads.
            self.scale = state[0] * 7
            self.training = state[1]

        def forward(self, x):
            return x * self.scale

    torch.jit.save(torch.jit.script(WithState()), str(path))
    return path


def test_torchscript_archive_is_refused_before_it_runs(tmp_path, jit_load_spy):
    path = _torchscript_archive(tmp_path / 'scripted.pth')
    with pytest.raises(UnsafeCheckpointError, match='TorchScript') as err:
        safe_load(path)
    assert str(path) in str(err.value)
    assert jit_load_spy == []


def test_torchscript_archive_refused_by_every_mmengine_path(tmp_path, jit_load_spy):
    pytest.importorskip('mmengine')
    import vssm_mm  # noqa: F401
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint_with_prefix
    path = str(_torchscript_archive(tmp_path / 'scripted.pth'))
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(path)  # load_from, --resume, tools/test.py
    with pytest.raises(UnsafeCheckpointError):
        _load_checkpoint_with_prefix('backbone.', path)  # init_cfg=Pretrained with a prefix
    assert jit_load_spy == []


def test_legacy_tar_format_is_refused(tmp_path):
    import tarfile
    path = tmp_path / 'legacy.tar'
    with tarfile.open(path, 'w') as tar:
        for name in ('sys_info', 'pickle', 'storages', 'tensors'):
            data = pickle.dumps({'x': 1})
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__('io').BytesIO(data))
    with pytest.raises(UnsafeCheckpointError, match='legacy tar'):
        safe_load(path)


@pytest.mark.parametrize('content', [b'', b'\x00' * 64] +
                         [__import__('random').Random(seed).randbytes(4096) for seed in range(8)] +
                         [b'PK\x03\x04' + __import__('random').Random(0).randbytes(512)],
                         ids=['empty', 'zeros'] + [f'random{seed}' for seed in range(8)] +
                         ['broken-zip'])
def test_empty_random_and_damaged_files_name_the_file(tmp_path, content):
    from vssm_mm.checkpoint import CorruptCheckpointError
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as err:
        safe_load(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint_names_the_file(tmp_path):
    from vssm_mm.checkpoint import CorruptCheckpointError
    path = tmp_path / 'cut.pth'
    torch.save({'state_dict': {'w': torch.randn(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CorruptCheckpointError, match='truncated') as err:
        safe_load(path)
    assert str(path) in str(err.value)


def test_object_arrays_cannot_smuggle_code(tmp_path):
    """numpy's allow_pickle path: an object array's items are unpickled by the same allow-list."""
    marker = tmp_path / 'pwned'
    array = np.empty(2, dtype=object)
    array[0], array[1] = 1.0, _RunsShell(marker)
    path = tmp_path / 'objects.pth'
    torch.save({'meta': array}, path)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    assert not marker.exists()
    plain = tmp_path / 'plain_objects.pth'
    array[1] = 'text'
    torch.save({'meta': array}, plain)
    assert list(safe_load(plain)['meta']) == [1.0, 'text']


def test_torch_env_switch_does_not_lift_the_restriction(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'x': _RunsShell(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    assert not marker.exists()


# -- mmengine's remote schemes -------------------------------------------------------------------

@pytest.fixture
def served(tmp_path, monkeypatch):
    """A fake web server: downloads copy files from tmp_path/server into the hub cache."""
    pytest.importorskip('mmengine')
    import shutil

    import vssm_mm  # noqa: F401
    server = tmp_path / 'server'
    server.mkdir()
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))

    def download(url, dst, *args, **kwargs):
        shutil.copy(server / url.rsplit('/', 1)[-1], dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    return server


def test_http_checkpoints_are_loaded_safely(served, tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader
    torch.save({'state_dict': {'w': torch.ones(3)}}, served / 'good.pth')
    loaded = CheckpointLoader.load_checkpoint('https://example.org/weights/good.pth')
    assert torch.equal(loaded['state_dict']['w'], torch.ones(3))
    marker = tmp_path / 'pwned'
    torch.save({'x': _RunsShell(marker)}, served / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint('http://example.org/evil.pth')
    assert not marker.exists()


def test_name_schemes_resolve_to_the_safe_http_loader(served, tmp_path, monkeypatch):
    """torchvision://, open-mmlab:// and mmcls:// resolve names to URLs, then download."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    marker = tmp_path / 'pwned'
    torch.save({'x': _RunsShell(marker)}, served / 'evil.pth')
    url = 'https://example.org/evil.pth'
    monkeypatch.setattr(mmengine_checkpoint, 'get_torchvision_models', lambda: {'net': url})
    monkeypatch.setattr(mmengine_checkpoint, 'get_external_models', lambda: {'net': url})
    monkeypatch.setattr(mmengine_checkpoint, 'get_mmcls_models', lambda: {'net': url})
    for name in ('torchvision://net', 'modelzoo://net', 'open-mmlab://net', 'mmcls://net'):
        with pytest.raises(UnsafeCheckpointError):
            mmengine_checkpoint.CheckpointLoader.load_checkpoint(name)
    assert not marker.exists()


def test_object_store_schemes_are_loaded_safely(tmp_path, monkeypatch):
    """s3:// / petrel:// read bytes through a file backend, then torch.load them."""
    pytest.importorskip('mmengine')
    import vssm_mm  # noqa: F401
    from mmengine.runner import checkpoint as mmengine_checkpoint
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'x': _RunsShell(marker)}, evil)

    class Bucket:
        def get(self, filename):
            return evil.read_bytes()

    monkeypatch.setattr(mmengine_checkpoint, 'get_file_backend', lambda *a, **k: Bucket())
    for name in ('s3://bucket/evil.pth', 'petrel://bucket/evil.pth'):
        with pytest.raises(UnsafeCheckpointError):
            mmengine_checkpoint.CheckpointLoader.load_checkpoint(name)
    assert not marker.exists()
