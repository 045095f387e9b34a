"""Shared plumbing of tools/train.py and tools/test.py."""
import os.path as osp
import warnings

# mmengine 0.10.7 and mmcv import pkg_resources; the deprecation notice is noise for users.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')


def load_config(path, cfg_options=None, work_dir=None, launcher='none'):
    """Read a config, apply --cfg-options, set work_dir and launcher."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config not found: {path}')
    import vssm_mm  # noqa: F401  (installs the safe checkpoint loader; registers the scope)
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


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
