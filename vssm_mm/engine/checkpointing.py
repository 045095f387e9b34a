"""Checkpoints that a kill at any moment cannot lose, and a resume that finds the newest one.

mmengine's ``CheckpointHook`` deletes the oldest kept checkpoint *before* it writes the new one,
writes the new file in place and only then updates ``last_checkpoint``. A ``kill -9`` in that
window leaves ``last_checkpoint`` naming a missing or half-written file, and with
``max_keep_ckpts=1`` no complete checkpoint at all. :class:`AtomicCheckpointHook` writes to a
temporary file, fsyncs it, renames it into place, then updates ``last_checkpoint`` (also by
rename) and deletes old checkpoints last; the ``best_*`` checkpoints of ``save_best`` (which
mmengine also deletes first and writes in place) get the same order.
:func:`find_resume_checkpoint` picks what to resume from: the newest complete checkpoint, with a
message when the one named is missing or truncated.
"""
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

from vssm_mm.registry import HOOKS

CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: str, dst: str) -> None:
    """``os.replace`` after flushing ``src`` to disk, then flush the directory entry."""
    _fsync(src)
    os.replace(src, dst)
    try:
        _fsync(osp.dirname(osp.abspath(dst)))
    except OSError:  # some file systems cannot fsync a directory
        pass


def write_text_atomically(path: str, text: str) -> None:
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    replace_durably(tmp, path)


def is_complete_checkpoint(path: str) -> bool:
    """True for a non-empty file whose zip directory (written last by ``torch.save``) is intact."""
    try:
        if not osp.isfile(path) or osp.getsize(path) == 0:
            return False
        with zipfile.ZipFile(path) as archive:
            return len(archive.namelist()) > 0
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _step(path: str) -> Tuple[int, float]:
    match = CHECKPOINT_NAME.match(osp.basename(path))
    return (int(match.group(2)) if match else -1, osp.getmtime(path))


def complete_checkpoints(directory: str) -> List[str]:
    """``epoch_N.pth`` / ``iter_N.pth`` files in ``directory`` that are complete, oldest first."""
    if not osp.isdir(directory):
        return []
    found = [osp.join(directory, name) for name in os.listdir(directory)
             if CHECKPOINT_NAME.match(name)]
    return sorted((p for p in found if is_complete_checkpoint(p)), key=_step)


def read_last_checkpoint(work_dir: str) -> Optional[str]:
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def find_resume_checkpoint(work_dir: str,
                           named: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
    """Choose the checkpoint to resume from.

    Args:
        work_dir: The run's work directory (holds ``last_checkpoint``).
        named: A checkpoint the user named (``--resume PATH``); ``None`` means the one
            ``last_checkpoint`` names.

    Returns:
        ``(path, message)``: the newest complete checkpoint among the named one and the
        ``epoch_N.pth`` / ``iter_N.pth`` files beside it and in ``work_dir`` (``None`` when
        there is none), and a message for the user when that is not the one named.
    """
    explicit = named is not None
    named = named if explicit else read_last_checkpoint(work_dir)
    folders = {osp.abspath(work_dir)}
    if named:
        folders.add(osp.dirname(osp.abspath(named)))
    candidates = [p for folder in sorted(folders) for p in complete_checkpoints(folder)]
    named_ok = bool(named) and is_complete_checkpoint(named)
    if explicit and named_ok:
        return named, None
    if named_ok:
        candidates.append(named)
    if not candidates:
        if named:
            return None, (f'{named} is {"truncated" if osp.exists(named) else "missing"} and no '
                          f'complete checkpoint was found in {work_dir}')
        return None, None
    newest = max(candidates, key=_step)
    if named and not named_ok:
        state = 'truncated' if osp.exists(named) else 'missing'
        return newest, (f'{named} is {state}; resuming from the newest complete checkpoint, '
                        f'{newest}')
    if named and osp.abspath(newest) != osp.abspath(named):
        return newest, (f'{newest} is newer than {named} (which last_checkpoint names: the run '
                        'stopped between the two writes); resuming from it')
    return newest, None


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``, with writes that a kill cannot leave half-done.

    Order of a save: the checkpoint goes to ``<name>.tmp``, is fsynced and renamed to
    ``<name>``; ``last_checkpoint`` is rewritten the same way; only then are checkpoints beyond
    ``max_keep_ckpts`` deleted. At every moment the work dir holds a complete checkpoint that
    ``last_checkpoint`` or :func:`find_resume_checkpoint` finds. Takes the same arguments as
    ``CheckpointHook``; remote ``out_dir`` back ends (no rename) keep mmengine's order.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        expired = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                expired.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename + '.tmp',
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        replace_durably(self.last_ckpt + '.tmp', self.last_ckpt)
        write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in expired:
            old_path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if old != step and osp.isfile(old_path):
                os.remove(old_path)

    def _save_best_checkpoint(self, runner, metrics):
        """mmengine's choice of the best checkpoint, with its writes reordered.

        mmengine deletes the previous ``best_*`` file first and then writes the new one in
        place, so a kill in between leaves no best checkpoint, or half of one. Here the new one
        goes to ``<name>.tmp`` and is renamed into place, and the previous one is deleted only
        after that.
        """
        if not self.save_best or not isinstance(self.file_backend, LocalBackend):
            return super()._save_best_checkpoint(runner, metrics)
        superseded: List[str] = []

        def defer_removal(path, *args, **kwargs):
            superseded.append(str(path))

        def save_then_rename(out_dir, filename, *args, **kwargs):
            if filename.endswith('.tmp'):  # a periodic checkpoint: already written atomically
                return save(out_dir, filename, *args, **kwargs)
            path = self.file_backend.join_path(out_dir, filename)
            save(out_dir, filename + '.tmp', *args, **kwargs)
            if is_main_process():
                replace_durably(path + '.tmp', path)

        save, runner_has_own = runner.save_checkpoint, 'save_checkpoint' in vars(runner)
        runner.save_checkpoint = save_then_rename
        self.file_backend.remove = self.file_backend.rmtree = defer_removal
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            del self.file_backend.remove, self.file_backend.rmtree
            if runner_has_own:
                runner.save_checkpoint = save
            else:
                del runner.save_checkpoint
        current = {osp.abspath(p) for p in [getattr(self, 'best_ckpt_path', None),
                                            *getattr(self, 'best_ckpt_path_dict', {}).values()]
                   if p}
        for path in superseded:
            if osp.abspath(path) in current:
                continue
            if osp.isdir(path):
                self.file_backend.rmtree(path)
            elif osp.isfile(path):
                os.remove(path)


def use_atomic_checkpoints(cfg) -> None:
    """Swap mmengine's ``CheckpointHook`` in ``cfg.default_hooks`` for the atomic one."""
    hooks = cfg.get('default_hooks') or {}
    hook = hooks.get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook',
                                                 CheckpointHook):
        hook['type'] = 'vssm_mm.AtomicCheckpointHook'
