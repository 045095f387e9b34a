"""Parameters and FLOPs of a config's model, counted as the papers count them.

    python tools/get_flops.py configs/msvmamba/tiny_in1k.py           # 224x224
    python tools/get_flops.py configs/msvmamba/tiny_coco.py           # 1280x800
    python tools/get_flops.py configs/msvmamba/tiny_ade20k.py         # 512x2048
    python tools/get_flops.py --all [--family msvmamba] [--json out.json]

Default input sizes are the papers': 224x224 for classification, 1280x800 (W x H) for
detection and 512x2048 (H x W) for segmentation; ``--shape H W`` overrides. The selective scan
counts ``9 B L D N + B D L`` (+ ``B D L`` with a z gate); element-wise ops count zero, as in
the official analysis scripts. Where a paper used an analytic formula instead (LocalVim), that
count is printed too. ``--all`` prints every config with the values the papers report
(from configs/<family>/metafile.yml) beside ours.
"""
import argparse
import glob
import json
import os.path as osp
import sys
import warnings

warnings.filterwarnings('ignore')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmdet': (800, 1280), 'mmseg': (512, 2048)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of vssm_mm configs')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the paper\'s size for the task)')
    parser.add_argument('--all', action='store_true', help='every config under configs/')
    parser.add_argument('--family', help='with --all: only configs/<family>/')
    parser.add_argument('--task', choices=['cls', 'det', 'seg'], help='with --all: one task only')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if not args.all and not args.config:
        parser.error('give a CONFIG or --all')
    return args


def _scope_of(cfg):
    scope = cfg.get('default_scope')
    if scope not in DEFAULT_SHAPES:
        raise ValueError(f'cannot tell the task of this config (default_scope={scope!r}); '
                         'expected an mmpretrain, mmdet or mmseg config')
    return scope


def build_model(cfg):
    """The config's model on CPU, eval mode, without loading any checkpoint."""
    import importlib

    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    scope = _scope_of(cfg)
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    cfg.model.pop('pretrained', None)
    init_default_scope(scope)
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model)
    return revert_sync_batchnorm(model).eval(), scope


class _TensorForward:
    """Wraps a task model so that ``forward(images)`` runs the task's tensor-mode forward."""

    @staticmethod
    def wrap(model, scope, height, width):
        from torch import nn

        if scope == 'mmdet':
            from mmdet.structures import DetDataSample
            sample = DetDataSample(metainfo=dict(
                img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0)))

            class Det(nn.Module):

                def __init__(self):
                    super().__init__()
                    self.model = model

                def forward(self, x):
                    return self.model._forward(x, [sample])

            return Det()

        class Plain(nn.Module):

            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model(x, mode='tensor')

        return Plain()


def analyse(config, shape=None):
    import torch
    from mmengine.config import Config

    import vssm_mm  # noqa: F401
    from vssm_mm.analysis import model_complexity
    cfg = Config.fromfile(config)
    model, scope = build_model(cfg)
    height, width = shape or DEFAULT_SHAPES[scope]
    wrapped = _TensorForward.wrap(model, scope, height, width)
    with torch.no_grad():
        result = model_complexity(wrapped, torch.randn(1, 3, height, width))
    backbone = getattr(model, 'backbone', None)
    row = dict(config=osp.relpath(osp.abspath(config), ROOT), task=scope, input=[height, width],
               params=result['params'],
               backbone_params=sum(p.numel() for p in backbone.parameters()) if backbone else None,
               flops=int(result['flops']))
    if scope == 'mmpretrain' and hasattr(backbone, 'paper_flops'):
        # Families whose paper used an analytic formula (LocalVim) report it too.
        row['paper_formula_flops'] = int(backbone.paper_flops(height, width,
                                                              cfg.model.head.num_classes))
    return row


def load_reported():
    """{config path: {'Parameters': ..., 'FLOPs': ...}} from the families' metafiles."""
    import yaml
    reported = {}
    for path in glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml')):
        with open(path) as f:
            meta = yaml.safe_load(f) or {}
        for model in meta.get('Models', []):
            reported[model['Config']] = dict(model.get('Reported', {}) or {})
    return reported


def _fmt_count(value, unit):
    if value is None:
        return '-'
    if isinstance(value, str):
        return value
    scale = {'M': 1e6, 'G': 1e9}[unit]
    return f'{value / scale:.2f}{unit}'


def main(argv=None):
    args = parse_args(argv)
    if args.all:
        pattern = osp.join(ROOT, 'configs', args.family or '*', '*.py')
        configs = sorted(p for p in glob.glob(pattern) if '/_base_/' not in p)
        suffix = {'cls': '_in1k', 'det': '_coco', 'seg': '_ade20k'}
        if args.task:
            configs = [c for c in configs if suffix[args.task] in osp.basename(c)]
        if not configs:
            sys.exit(f'no configs match {pattern}')
    else:
        if not osp.isfile(args.config):
            sys.exit(f'config not found: {args.config}')
        configs = [args.config]
    reported = load_reported()
    rows = []
    for config in configs:
        try:
            row = analyse(config, args.shape)
        except Exception as err:  # keep going through --all; say what failed
            print(f'{config}: failed: {err}', file=sys.stderr)
            if not args.all:
                raise
            continue
        row['reported'] = reported.get(row['config'], {})
        rows.append(row)
        if not args.all:
            print(f"config:   {row['config']}\ninput:    {row['input'][0]}x{row['input'][1]} "
                  f"(HxW)\nparams:   {row['params']:,} ({_fmt_count(row['params'], 'M')})\n"
                  f"FLOPs:    {row['flops']:,} ({_fmt_count(row['flops'], 'G')})")
            if 'paper_formula_flops' in row:
                print(f"paper's analytic formula: {row['paper_formula_flops']:,} "
                      f"({_fmt_count(row['paper_formula_flops'], 'G')})")
            if row['reported']:
                print(f"reported: params {row['reported'].get('Parameters', '-')}, "
                      f"FLOPs {row['reported'].get('FLOPs', '-')}")
    if args.all:
        header = f"{'config':48s} {'input':>10s} {'params':>10s} {'paper':>8s} " \
                 f"{'FLOPs':>10s} {'formula':>9s} {'paper':>8s} {'official code':>13s}"
        print(header)
        print('-' * len(header))
        for row in rows:
            rep = row['reported']
            print(f"{row['config']:48s} {row['input'][0]:>4d}x{row['input'][1]:<5d} "
                  f"{_fmt_count(row['params'], 'M'):>10s} {str(rep.get('Parameters', '-')):>8s} "
                  f"{_fmt_count(row['flops'], 'G'):>10s} "
                  f"{_fmt_count(row.get('paper_formula_flops'), 'G'):>9s} "
                  f"{str(rep.get('FLOPs', '-')):>8s} "
                  f"{str(rep.get('Official code FLOPs', '-')):>13s}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
