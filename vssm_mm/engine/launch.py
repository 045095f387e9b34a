"""What ``tools/train.py`` and ``tools/test.py`` share: reading a config, checking what it needs,
CPU-only distributed launches and building the Runner."""
import argparse
import os
import os.path as osp
import sys
import warnings

# mmengine 0.10.7 and mmcv import pkg_resources; the deprecation notice is noise for users.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

#: Exit status of a run refused before it started (bad arguments, missing inputs).
USAGE_ERROR = 2


class UsageError(Exception):
    """A problem the user can fix before anything runs; printed without a traceback."""


class DictAction(argparse.Action):
    """mmengine's DictAction, imported when used, so that ``--help`` needs no mmengine."""

    def __call__(self, parser, namespace, values, option_string=None):
        from mmengine.config import DictAction as MMEngineDictAction
        MMEngineDictAction(self.option_strings, self.dest)(parser, namespace, values,
                                                           option_string)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. train_cfg.max_epochs=1 '
                        'model.backbone.drop_path_rate=0.1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def set_local_rank(args) -> None:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


def load_config(path, cfg_options=None, work_dir=None, launcher='none'):
    """Read a config, apply --cfg-options, set work_dir and launcher, use atomic checkpoints."""
    if not osp.isfile(path):
        raise UsageError(f'config not found: {path}')
    if work_dir is not None and osp.exists(work_dir) and not osp.isdir(work_dir):
        raise UsageError(f'--work-dir {work_dir} is a file, not a folder; name a folder '
                         '(it is created if missing)')
    import vssm_mm  # noqa: F401  (installs the safe checkpoint loader; registers the scope)
    from mmengine.config import Config

    from .allocator import reuse_freed_memory
    from .checkpointing import use_atomic_checkpoints

    reuse_freed_memory()  # no page faults on every iteration's activations (allocator.py)

    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    if osp.exists(cfg.work_dir) and not osp.isdir(cfg.work_dir):
        raise UsageError(f'the work dir {cfg.work_dir} is a file, not a folder; pass '
                         '--work-dir FOLDER')
    use_atomic_checkpoints(cfg)
    return cfg


def check_inputs(cfg, config_path: str, mode: str, resume: bool = False) -> None:
    """Raise :class:`UsageError` listing every file the run needs that is missing."""
    from .preflight import format_missing, missing_inputs
    missing = missing_inputs(cfg, mode, resume=resume)
    if missing:
        raise UsageError(format_missing(config_path, missing))


def setup_cpu_distributed(cfg):
    """Make a torchrun launch work on machines without GPUs (gloo, no device_ids).

    mmengine assumes NCCL and one GPU per process; on CPU-only nodes (and in our CI) a
    ``--launcher pytorch`` run uses gloo and a DDP wrapper without device ids instead.
    """
    if cfg.launcher == 'none':
        return
    import torch
    if torch.cuda.is_available():
        return
    cfg.setdefault('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    if not torch.distributed.is_initialized() and cfg.launcher == 'pytorch':
        # mmengine's init_dist calls torch.cuda.set_device(), which fails without a GPU.
        torch.distributed.init_process_group(backend='gloo')


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def run_tool(main, argv=None):
    """Run a tool's ``main``; a :class:`UsageError` or a checkpoint that does not fit becomes
    a message on stderr and exit status 2 instead of a traceback."""
    from vssm_mm.checkpoint import CorruptCheckpointError, UnsafeCheckpointError
    from vssm_mm.checkpoint.fit import CheckpointMismatchError
    try:
        return main(argv)
    except (UsageError, CheckpointMismatchError, UnsafeCheckpointError,
            CorruptCheckpointError) as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(USAGE_ERROR)
