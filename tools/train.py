"""Train a model from a config with mmengine's Runner (mmpretrain, mmdet or mmseg configs).

    python tools/train.py configs/msvmamba/tiny_coco.py
    python tools/train.py CONFIG --work-dir work_dirs/x --amp --resume
    bash tools/dist_train.sh CONFIG 8                       # 8 GPUs, one node

Before anything is built, the datasets, annotation files and checkpoints the config names are
checked; what is missing is listed with how to get it (exit status 2). Checkpoints are written
atomically, and ``--resume`` continues from the newest complete one.
"""
import argparse
import sys

from vssm_mm.engine.launch import (UsageError, add_common_arguments, build_runner, check_inputs,
                                   load_config, run_tool, set_local_rank, setup_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a vssm_mm model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the newest complete '
                        'checkpoint in the work dir when no path is given')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision training (needs a GPU)')
    parser.add_argument('--partial-load', action='store_true',
                        help='let load_from checkpoints fit the model partially (fine-tuning '
                        'with another head); by default every weight must fit')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual total batch size')
    parser.add_argument('--no-validate', action='store_true',
                        help='skip validation during training')
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args)
    return args


def _gpu_available() -> bool:
    import torch
    return torch.cuda.is_available()


def enable_amp(cfg) -> None:
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper_type == 'AmpOptimWrapper':
        print('AMP is already enabled in the config.')
        return
    if wrapper_type != 'OptimWrapper':
        raise UsageError(f'--amp works with OptimWrapper configs, but this one uses {wrapper_type}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def choose_resume(cfg, resume: str) -> None:
    """Point the config at the checkpoint to resume from (the newest complete one)."""
    from vssm_mm.engine.checkpointing import find_resume_checkpoint
    named = None if resume == 'auto' else resume
    path, message = find_resume_checkpoint(cfg.work_dir, named)
    if message:
        print(f'[resume] {message}', file=sys.stderr)
    if path is None:
        if named is not None:
            raise UsageError(f'--resume {named}: no such checkpoint, and no complete checkpoint '
                             f'in {cfg.work_dir} to fall back to')
        print(f'[resume] no checkpoint in {cfg.work_dir}; starting from scratch',
              file=sys.stderr)
        cfg.resume, cfg.load_from = False, None
        return
    cfg.resume, cfg.load_from = True, path


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)

    if args.amp:
        enable_amp(cfg)
    if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper' and not _gpu_available():
        raise UsageError('mixed precision (--amp or an AmpOptimWrapper config) needs a GPU: '
                         "mmengine's AmpOptimWrapper runs on CUDA only. On a CPU, train in fp32: "
                         'drop --amp (or --cfg-options optim_wrapper.type=OptimWrapper).')

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise UsageError('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=...)` '
                             'in the config')
        cfg.auto_scale_lr.enable = True

    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
        if cfg.get('train_cfg'):
            cfg.train_cfg.pop('val_interval', None)

    check_inputs(cfg, args.config, 'train', resume=args.resume is not None)
    if args.resume is not None:
        choose_resume(cfg, args.resume)
    load_from = None if cfg.get('resume') else cfg.get('load_from')

    setup_cpu_distributed(cfg)
    runner = build_runner(cfg)
    if load_from:
        from vssm_mm.checkpoint.fit import check_checkpoint_fits
        check_checkpoint_fits(runner.model, load_from, partial=args.partial_load)
    runner.train()


if __name__ == '__main__':
    run_tool(main)
