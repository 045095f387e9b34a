"""Test (evaluate) a checkpoint with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --out results.pkl --show-dir vis
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

The checkpoint must fit the config's model exactly (every weight present, nothing left over,
same shapes); ``--partial-load`` accepts a partial fit. The test data the config names is
checked before anything is built.
"""
import argparse
import os.path as osp

from vssm_mm.engine.launch import (UsageError, add_common_arguments, build_runner, check_inputs,
                                   load_config, run_tool, set_local_rank, setup_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a vssm_mm model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='directory for the evaluation logs and metrics')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file (.pkl)')
    parser.add_argument('--show-dir', help='draw predictions into this directory '
                        '(relative paths are inside the timestamped log directory)')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds between shown images')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation from the config')
    parser.add_argument('--partial-load', action='store_true',
                        help='evaluate even if the checkpoint fits the model only partially '
                        '(the weights it lacks keep their random initialisation)')
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args)
    return args


def enable_visualization(cfg, show_dir, show, wait_time):
    """Switch on the task library's visualization hook (mmdet, mmseg and mmpretrain differ)."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise UsageError('--show/--show-dir need a `visualization` hook in default_hooks')
    vis = hooks.visualization
    scope = cfg.get('default_scope', None)
    if scope == 'mmpretrain':
        vis.enable = True
        vis.out_dir = show_dir
        vis.show = show
        vis.wait_time = wait_time
    elif scope == 'mmseg':
        vis.draw = True
        vis.interval = 1
        vis.show = show
        vis.wait_time = wait_time
        if show_dir:
            cfg.visualizer.save_dir = show_dir
    else:  # mmdet
        vis.draw = True
        vis.interval = 1
        vis.show = show
        vis.wait_time = wait_time
        if show_dir:
            vis.test_out_dir = show_dir


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if not osp.isfile(args.checkpoint):
        raise UsageError(f'checkpoint not found: {args.checkpoint}')
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        enable_visualization(cfg, args.show_dir, args.show, args.wait_time)

    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise UsageError('--tta needs `tta_model` and `tta_pipeline` in the config')
        cfg.model = dict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline

    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise UsageError(f'--out must end with .pkl or .pickle, got {args.out}')
        if osp.exists(args.out):
            raise UsageError(f'--out {args.out} exists; choose another name or remove it')
        from mmengine.evaluator import DumpResults
        dump = DumpResults(out_file_path=args.out)
        evaluator = cfg.test_evaluator
        evaluator = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
        cfg.test_evaluator = evaluator

    check_inputs(cfg, args.config, 'test')
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg)
    from vssm_mm.checkpoint.fit import check_checkpoint_fits
    check_checkpoint_fits(runner.model, args.checkpoint, partial=args.partial_load)
    if args.out is not None:
        runner.test_evaluator.metrics.append(dump)
    metrics = runner.test()
    return metrics


if __name__ == '__main__':
    run_tool(main)
