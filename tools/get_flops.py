"""Parameters and FLOPs of a config's model, counted as the papers count them.

    python tools/get_flops.py configs/msvmamba/tiny_in1k.py           # 224x224
    python tools/get_flops.py configs/msvmamba/tiny_coco.py           # 1280x800
    python tools/get_flops.py configs/msvmamba/tiny_ade20k.py         # 512x2048
    python tools/get_flops.py --all [--family msvmamba] [--task det] [--json out.json]

Default input sizes are the papers': 224x224 for classification, 1280x800 (W x H) for
detection and 512x2048 (H x W) for segmentation; ``--shape H W`` overrides. The count follows
fvcore's rules (one multiply-add = one FLOP; norms, upsampling and adaptive pooling by element;
element-wise ops zero), with the selective scan counted ``9 B L D N + B D L`` (+ ``B D L`` with
a z gate), as the official analysis scripts do. The model runs on the meta device (shapes
only), so every config counts in seconds and about 1 GB (mostly the libraries), at any input
size. Two-stage detectors
count their RoI heads on as many proposals as the RPN keeps at test time (``max_per_img``), as a
count on a real image does. Where a paper used an analytic formula instead (LocalVim), that
count is reported too. ``--all`` prints every config with the values the papers report (from
configs/<family>/metafile.yml) beside ours.
"""
import argparse
import glob
import json
import os.path as osp
import resource
import sys
import time
import warnings

warnings.filterwarnings('ignore')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmdet': (800, 1280), 'mmseg': (512, 2048)}
TASK_SUFFIXES = {'cls': ('_in1k', ), 'det': ('_coco', ), 'seg': ('_ade20k', )}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of vssm_mm configs')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the paper\'s size for the task)')
    parser.add_argument('--all', action='store_true', help='every config under configs/')
    parser.add_argument('--family', help='with --all: only configs/<family>/')
    parser.add_argument('--task', choices=sorted(TASK_SUFFIXES), help='with --all: one task only')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if not args.all and not args.config:
        parser.error('give a CONFIG or --all')
    return args


def all_configs(family=None, task=None):
    """Every model config of configs/<family>/ (not _base_/ or demo/), sorted."""
    pattern = osp.join(ROOT, 'configs', family or '*', '*.py')
    configs = sorted(p for p in glob.glob(pattern)
                     if osp.basename(osp.dirname(p)) not in ('_base_', 'demo'))
    if task:
        configs = [c for c in configs if any(s in osp.basename(c) for s in TASK_SUFFIXES[task])]
    return configs


class _ShapeOnlyRoIExtractors:
    """RoI extractors return zeros of their output shape while active.

    Which level each RoI comes from depends on proposal values (``nonzero``), which the meta
    device has not; RoIAlign counts zero FLOPs in fvcore's rules (an unsupported op), so only
    the shape of what it returns matters for the heads after it.
    """

    def __init__(self, model):
        from mmdet.models.roi_heads.roi_extractors import BaseRoIExtractor
        self.extractors = [m for m in model.modules() if isinstance(m, BaseRoIExtractor)]

    @staticmethod
    def _forward(extractor):
        def forward(feats, rois, roi_scale_factor=None):
            size = extractor.roi_layers[0].output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            return feats[0].new_zeros(rois.size(0), extractor.out_channels, *size)
        return forward

    def __enter__(self):
        for extractor in self.extractors:
            extractor.forward = self._forward(extractor)

    def __exit__(self, *exc):
        for extractor in self.extractors:
            del extractor.forward


def detection_forward(sample):
    """``forward(model, counter, images)`` for an mmdet model, counting what
    ``model._forward`` (the tensor mode) runs."""

    def forward(model, counter, images):
        if not (getattr(model, 'with_rpn', False) and getattr(model, 'with_roi_head', False)):
            return model._forward(images, [sample])
        from mmengine.structures import InstanceData
        feats = model.extract_feat(images)
        model.rpn_head(feats)
        # The RPN's proposals after NMS: on a real image (or noise through untrained weights)
        # more than max_per_img boxes survive, so the RoI heads see max_per_img of them.
        proposals = InstanceData(bboxes=feats[0].new_zeros(model.rpn_head.test_cfg.max_per_img, 4))
        with counter.scope('roi_head'), _ShapeOnlyRoIExtractors(model):
            model.roi_head.forward(feats, [proposals], [sample])

    return forward


def task_forward(model, scope, height, width):
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
            batch_input_shape=(height, width), scale_factor=(1.0, 1.0)))
        return detection_forward(sample)
    return lambda model, counter, images: model(images, mode='tensor')


def analyse(config, shape=None):
    import torch
    from mmengine.config import Config

    import vssm_mm  # noqa: F401
    from vssm_mm.analysis import model_complexity
    from vssm_mm.analysis.build import build_model
    start = time.perf_counter()
    cfg = Config.fromfile(config)
    model, scope = build_model(cfg)
    height, width = shape or DEFAULT_SHAPES[scope]
    backbone = getattr(model, 'backbone', None)
    row = dict(config=osp.relpath(osp.abspath(config), ROOT), task=scope, input=[height, width],
               backbone_params=sum(p.numel() for p in backbone.parameters()) if backbone else None)
    if scope == 'mmpretrain' and hasattr(backbone, 'paper_flops'):
        # Families whose paper used an analytic formula (LocalVim) report it too.
        row['paper_formula_flops'] = int(backbone.paper_flops(height, width,
                                                              cfg.model.head.num_classes))
    result = model_complexity(model, torch.empty(1, 3, height, width),
                              forward=task_forward(model, scope, height, width))
    row.update(params=result['params'], flops=int(result['flops']),
               backbone_flops=int(result['by_module'].get('backbone', 0)),
               by_operator={k: int(v) for k, v in sorted(result['by_operator'].items())})
    row['seconds'] = round(time.perf_counter() - start, 2)
    row['peak_memory_mb'] = round(_peak_memory_mb())
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


def _peak_memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    args = parse_args(argv)
    if args.all:
        configs = all_configs(args.family, args.task)
        if not configs:
            sys.exit(f'no configs under configs/{args.family or "*"}/ for task {args.task}')
    else:
        if not osp.isfile(args.config):
            sys.exit(f'config not found: {args.config}')
        configs = [args.config]
    reported = load_reported()
    rows, failed = [], []
    start = time.perf_counter()
    for config in configs:
        try:
            row = analyse(config, args.shape)
        except Exception as err:  # keep going through --all; say what failed
            print(f'{config}: failed: {type(err).__name__}: {err}', file=sys.stderr)
            if not args.all:
                raise
            failed.append(config)
            continue
        row['reported'] = reported.get(row['config'], {})
        rows.append(row)
        if not args.all:
            print(f"config:   {row['config']}\ninput:    {row['input'][0]}x{row['input'][1]} "
                  f"(HxW)\nparams:   {row['params']:,} ({_fmt_count(row['params'], 'M')})\n"
                  f"FLOPs:    {row['flops']:,} ({_fmt_count(row['flops'], 'G')})\n"
                  f"backbone: {row['backbone_flops']:,} FLOPs")
            if 'paper_formula_flops' in row:
                print(f"paper's analytic formula: {row['paper_formula_flops']:,} "
                      f"({_fmt_count(row['paper_formula_flops'], 'G')})")
            if row['reported']:
                print(f"reported: params {row['reported'].get('Parameters', '-')}, "
                      f"FLOPs {row['reported'].get('FLOPs', '-')}")
            print(f"counted in {row['seconds']:.1f} s, peak memory {_peak_memory_mb():.0f} MB")
    if args.all:
        header = f"{'config':48s} {'input':>10s} {'params':>10s} {'paper':>8s} " \
                 f"{'FLOPs':>10s} {'formula':>9s} {'paper':>8s} {'official code':>13s} " \
                 f"{'s':>6s}"
        print(header)
        print('-' * len(header))
        for row in rows:
            rep = row['reported']
            print(f"{row['config']:48s} {row['input'][0]:>4d}x{row['input'][1]:<5d} "
                  f"{_fmt_count(row['params'], 'M'):>10s} {str(rep.get('Parameters', '-')):>8s} "
                  f"{_fmt_count(row['flops'], 'G'):>10s} "
                  f"{_fmt_count(row.get('paper_formula_flops'), 'G'):>9s} "
                  f"{str(rep.get('FLOPs', '-')):>8s} "
                  f"{str(rep.get('Official code FLOPs', '-')):>13s} {row['seconds']:>6.1f}")
        print(f'{len(rows)} configs counted in {time.perf_counter() - start:.0f} s, peak memory '
              f'{_peak_memory_mb():.0f} MB' + (f'; {len(failed)} failed: {failed}' if failed
                                               else ''))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
            f.write('\n')
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
