"""Training hooks for short interactive runs (the demos)."""
import sys
import time

from mmengine.hooks import Hook

from vssm_mm.registry import HOOKS


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A one-line progress bar with the elapsed time and an ETA for iteration-based training.

    Args:
        width (int): Characters of the bar.
        stream: Where to draw it (default: stderr).
    """

    priority = 'VERY_LOW'

    def __init__(self, width: int = 30, stream=None):
        self.width = width
        self.stream = stream
        self._start = None

    def before_train(self, runner):
        self._start = time.time()
        self._first_iter = runner.iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        stream = self.stream or sys.stderr
        done, total = runner.iter + 1, runner.max_iters
        elapsed = time.time() - self._start
        rate = (done - self._first_iter) / max(elapsed, 1e-9)
        eta = (total - done) / rate if rate > 0 else float('inf')
        filled = int(self.width * done / total)
        loss = ''
        if isinstance(outputs, dict) and 'loss' in outputs:
            loss = f' loss {float(outputs["loss"]):.3f}'
        stream.write(f'\r[{"#" * filled}{"." * (self.width - filled)}] {done}/{total}{loss} '
                     f'elapsed {_clock(elapsed)} eta {_clock(eta)}   ')
        if done == total:
            stream.write('\n')
        stream.flush()


@HOOKS.register_module()
class ValidateBeforeTrainHook(Hook):
    """Run the validation loop once before the first training iteration.

    Logs the untrained model's metrics at iteration 0, so a run's curves start from the
    baseline the training has to beat. Skipped when resuming. Its priority is the lowest, so
    that it runs after every other hook's ``before_train`` (the checkpoint hook's sets up the
    ``save_best`` checkpoint that this validation may write).
    """

    priority = 'LOWEST'

    def before_train(self, runner):
        if runner.iter == 0 and runner.val_loop is not None:
            runner.val_loop.run()


def _clock(seconds: float) -> str:
    if seconds == float('inf'):
        return '--:--'
    minutes, seconds = divmod(int(seconds), 60)
    return f'{minutes:02d}:{seconds:02d}'
