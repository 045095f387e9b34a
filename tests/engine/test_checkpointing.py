"""Atomic checkpoint writes and the choice of what --resume continues from."""
import logging
import os
import time
from collections import deque
from types import SimpleNamespace

import pytest
import torch

mmengine = pytest.importorskip('mmengine')
from mmengine.fileio import LocalBackend  # noqa: E402
from mmengine.logging import MessageHub  # noqa: E402

from vssm_mm.engine.checkpointing import (AtomicCheckpointHook,  # noqa: E402
                                          find_resume_checkpoint, is_complete_checkpoint,
                                          use_atomic_checkpoints)


def _save(path, step):
    torch.save({'state_dict': {'w': torch.full((4, ), float(step))}, 'meta': {'iter': step}},
               path)


class _KilledWhileWriting(BaseException):
    pass


def _runner(work_dir, die_during_write=False):
    def save_checkpoint(out_dir, filename, *args, **kwargs):
        path = os.path.join(out_dir, filename)
        if die_during_write:  # half a file, then the process is gone
            with open(path, 'wb') as f:
                f.write(b'PK\x03\x04 partial')
            raise _KilledWhileWriting
        _save(path, int(filename.split('_')[1].split('.')[0]))

    return SimpleNamespace(work_dir=str(work_dir), save_checkpoint=save_checkpoint,
                           message_hub=MessageHub.get_instance(f'ckpt-test-{time.time()}'))


def _hook(work_dir, max_keep=1):
    hook = AtomicCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=max_keep)
    hook.out_dir, hook.file_backend = str(work_dir), LocalBackend()
    hook.keep_ckpt_ids = deque(maxlen=max_keep)
    return hook


def test_a_kill_during_the_write_keeps_the_last_checkpoint(tmp_path):
    hook = _hook(tmp_path)
    hook._save_checkpoint_with_step(_runner(tmp_path), 1, meta={})
    assert (tmp_path / 'iter_1.pth').is_file()
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_1.pth')
    with pytest.raises(_KilledWhileWriting):
        hook._save_checkpoint_with_step(_runner(tmp_path, die_during_write=True), 2, meta={})
    # mmengine's hook deletes iter_1.pth first and leaves last_checkpoint -> a broken file.
    assert is_complete_checkpoint(str(tmp_path / 'iter_1.pth'))
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_1.pth')
    assert not (tmp_path / 'iter_2.pth').exists()
    path, message = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_1.pth') and message is None


def test_old_checkpoints_go_only_after_the_new_one_is_in_place(tmp_path):
    hook = _hook(tmp_path, max_keep=2)
    runner = _runner(tmp_path)
    for step in (1, 2, 3):
        hook._save_checkpoint_with_step(runner, step, meta={})
    assert sorted(p.name for p in tmp_path.glob('iter_*')) == ['iter_2.pth', 'iter_3.pth']
    assert not list(tmp_path.glob('*.tmp'))
    assert torch.load(tmp_path / 'iter_3.pth')['meta']['iter'] == 3


def _best_runner(work_dir, step, die_during_write=False):
    def save_checkpoint(out_dir, filename, *args, **kwargs):
        path = os.path.join(out_dir, filename)
        if die_during_write:
            with open(path, 'wb') as f:
                f.write(b'PK\x03\x04 partial')
            raise _KilledWhileWriting
        _save(path, step)

    return SimpleNamespace(work_dir=str(work_dir), epoch=0, iter=step, logger=logging.getLogger(),
                           save_checkpoint=save_checkpoint,
                           message_hub=MessageHub.get_instance(f'best-test-{time.time()}'))


def _best_hook(work_dir):
    hook = AtomicCheckpointHook(interval=1, by_epoch=False, save_best='acc', rule='greater')
    hook.out_dir, hook.file_backend = str(work_dir), LocalBackend()
    hook.best_ckpt_path = None
    return hook


def test_a_kill_while_writing_the_best_keeps_the_previous_best(tmp_path):
    hook = _best_hook(tmp_path)
    runner = _best_runner(tmp_path, 1)
    hook._save_best_checkpoint(runner, {'acc': 0.5})
    first = tmp_path / 'best_acc_iter_1.pth'
    assert is_complete_checkpoint(str(first)) and not list(tmp_path.glob('*.tmp'))
    killed = _best_runner(tmp_path, 2, die_during_write=True)
    killed.message_hub = runner.message_hub
    with pytest.raises(_KilledWhileWriting):
        hook._save_best_checkpoint(killed, {'acc': 0.7})
    # mmengine's hook deletes best_acc_iter_1.pth first and writes best_acc_iter_2.pth in place.
    assert is_complete_checkpoint(str(first))
    assert not (tmp_path / 'best_acc_iter_2.pth').exists()
    assert hook.file_backend.remove.__func__ is LocalBackend.remove  # the hook's patches are gone
    assert killed.save_checkpoint.__name__ == 'save_checkpoint'


def test_the_previous_best_goes_only_after_the_new_one_is_in_place(tmp_path):
    hook = _best_hook(tmp_path)
    runner = _best_runner(tmp_path, 1)
    hook._save_best_checkpoint(runner, {'acc': 0.5})
    for step, acc in ((2, 0.4), (3, 0.9)):  # 0.4 is not better: nothing changes
        later = _best_runner(tmp_path, step)
        later.message_hub = runner.message_hub
        hook._save_best_checkpoint(later, {'acc': acc})
    assert [p.name for p in tmp_path.iterdir()] == ['best_acc_iter_3.pth']
    assert torch.load(tmp_path / 'best_acc_iter_3.pth')['meta']['iter'] == 3
    assert hook.best_ckpt_path == str(tmp_path / 'best_acc_iter_3.pth')


def test_resume_falls_back_from_a_missing_or_truncated_checkpoint(tmp_path):
    _save(tmp_path / 'iter_3.pth', 3)
    _save(tmp_path / 'iter_4.pth', 4)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    path, message = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_4.pth')
    assert 'iter_6.pth is missing' in message
    (tmp_path / 'iter_6.pth').write_bytes((tmp_path / 'iter_4.pth').read_bytes()[:100])
    path, message = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_4.pth') and 'truncated' in message
    # An explicit --resume PATH that is complete is used as named.
    assert find_resume_checkpoint(str(tmp_path), str(tmp_path / 'iter_3.pth')) == (
        str(tmp_path / 'iter_3.pth'), None)
    # One killed between the rename and the last_checkpoint update: the newer file wins.
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_3.pth'))
    path, message = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_4.pth') and 'newer' in message


def test_nothing_to_resume(tmp_path):
    assert find_resume_checkpoint(str(tmp_path)) == (None, None)
    path, message = find_resume_checkpoint(str(tmp_path), str(tmp_path / 'gone.pth'))
    assert path is None and 'missing' in message


def test_configs_get_the_atomic_hook():
    from mmengine.config import Config
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1))))
    use_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint.type == 'vssm_mm.AtomicCheckpointHook'
