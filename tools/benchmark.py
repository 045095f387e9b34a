"""Throughput and peak memory of a config's model: inference and a training step.

    python tools/benchmark.py configs/msvmamba/tiny_in1k.py --batch-size 64 --device cuda
    python tools/benchmark.py configs/msvmamba/tiny_coco.py --batch-size 2 --shape 800 1280
    python tools/benchmark.py CONFIG --device cpu --batch-size 2 --shape 64 64 --json out.json
    python tools/benchmark.py CONFIG --scan-backend reference|cpu|triton|cuda
    python tools/benchmark.py CONFIG --device cpu --scan-backend reference cpu  # compared

Each mode runs ``--warmup`` untimed iterations, then ``--repeat`` timed ones (synchronised on
GPU); the table gives the median images/s with the spread over the timed runs. With several
scan backends, each timed iteration runs one step with every backend in turn, in one process
on one model, so that the machine's drift (other tenants, clock changes) falls on all of them
alike; the table then also gives each backend's speed-up over the first one (the ratio of the
median step times). Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and the
process's peak resident memory on CPU (with several backends, over all of them). The training
step is forward + loss + backward + an SGD update on a batch of random images with
random targets of the task (labels, boxes and masks, or segmentation maps).
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time
import warnings

warnings.filterwarnings('ignore')

DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmdet': (800, 1280), 'mmseg': (512, 512)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--device', default='cuda' if _cuda() else 'cpu',
                        help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='images per step (default: 64 on GPU for classification, else 2)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the task's training size)")
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations')
    parser.add_argument('--repeat', type=int, default=20, help='timed iterations')
    parser.add_argument('--modes', nargs='+', default=['inference', 'train'],
                        choices=['inference', 'train'])
    parser.add_argument('--amp', action='store_true', help='autocast to fp16 (GPU) / bf16 (CPU)')
    parser.add_argument('--scan-backend', nargs='+', default=['auto'],
                        choices=['auto', 'reference', 'cpu', 'triton', 'cuda'],
                        help='selective-scan backend; several (e.g. reference cpu) are timed in '
                        'turn, step by step, and compared')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries, e.g. model.teacher=None')
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeat < 1:
        parser.error('--warmup must be >= 0 and --repeat >= 1')
    if len(set(args.scan_backend)) != len(args.scan_backend):
        parser.error(f'--scan-backend lists a backend twice: {" ".join(args.scan_backend)}')
    return args


def _cuda():
    import torch
    return torch.cuda.is_available()


def fake_batch(scope, batch_size, height, width, num_classes, device):
    """Random images and random targets for the task, as the model's loss() expects them."""
    import torch
    inputs = torch.randn(batch_size, 3, height, width, device=device)
    samples = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(batch_size):
        meta = dict(img_shape=(height, width), ori_shape=(height, width),
                    pad_shape=(height, width), batch_input_shape=(height, width),
                    scale_factor=(1.0, 1.0))
        if scope == 'mmpretrain':
            from mmpretrain.structures import DataSample
            sample = DataSample(metainfo=meta).set_gt_label(
                int(torch.randint(num_classes, (1, ), generator=gen)))
        elif scope == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            n = 3
            xy = torch.rand(n, 2, generator=gen) * torch.tensor([width * 0.6, height * 0.6])
            wh = 16 + torch.rand(n, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3])
            boxes = torch.cat([xy, xy + wh], dim=1)
            masks = torch.zeros(n, height, width, dtype=torch.uint8)
            for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                masks[k, y0:y1, x0:x1] = 1
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=boxes.to(device), labels=torch.randint(num_classes, (n, )).to(device),
                masks=BitmapMasks(masks.numpy(), height, width))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=torch.randint(
                num_classes, (1, height, width), generator=gen).to(device))
        samples.append(sample)
    return inputs, samples


def _num_classes(cfg, scope):
    model = cfg.model
    if scope == 'mmpretrain':
        return model.head.num_classes
    if scope == 'mmdet':
        return model.roi_head.bbox_head.num_classes if 'roi_head' in model else \
            model.bbox_head.num_classes
    return model.decode_head.num_classes


def _sync(device):
    import torch
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _peak_memory_mb(device):
    import resource

    import torch
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def use_backend(name, environ_default):
    """Make the selective scan run backend ``name`` from the next call on ('auto': whatever
    $VSSM_SCAN_BACKEND said when the tool started)."""
    if name != 'auto':
        os.environ['VSSM_SCAN_BACKEND'] = name
    elif environ_default is None:
        os.environ.pop('VSSM_SCAN_BACKEND', None)
    else:
        os.environ['VSSM_SCAN_BACKEND'] = environ_default


def time_mode(model, scope, mode, inputs, samples, device, warmup, repeat, amp,
              backends=('auto', )):
    """Time ``mode`` with each scan backend, the backends' steps interleaved; a result row per
    backend."""
    import torch
    autocast = torch.autocast(device_type='cuda' if device.startswith('cuda') else 'cpu',
                              dtype=torch.float16 if device.startswith('cuda') else torch.bfloat16,
                              enabled=amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4) if mode == 'train' else None

    def step():
        if mode == 'inference':
            with torch.no_grad(), autocast:
                model(inputs, samples, mode='tensor') if scope != 'mmdet' else \
                    model._forward(inputs, samples)
        else:
            # Drop the last step's gradients before the forward: they must neither add up
            # across repeats nor sit in memory during this step's forward.
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                losses = model.loss(inputs, samples)
            loss, _ = model.parse_losses(losses)
            loss.backward()
            optimizer.step()

    model.train(mode == 'train')
    environ_default = os.environ.get('VSSM_SCAN_BACKEND')
    times = {name: [] for name in backends}
    try:
        if device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        for name in backends:
            use_backend(name, environ_default)
            for _ in range(warmup):
                step()
        _sync(device)
        for _ in range(repeat):
            for name in backends:
                use_backend(name, environ_default)
                start = time.perf_counter()
                step()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    finally:
        use_backend('auto', environ_default)
    batch, rows = inputs.shape[0], []
    for name in backends:
        rates = [batch / t for t in times[name]]
        rows.append(dict(mode=mode, scan_backend=name, images_per_s=statistics.median(rates),
                         min_images_per_s=min(rates), max_images_per_s=max(rates),
                         ms_per_step=1000 * statistics.median(times[name]),
                         peak_memory_mb=_peak_memory_mb(device)))
    for row in rows:
        row['speedup_over_first'] = rows[0]['ms_per_step'] / row['ms_per_step']
    return rows


def main(argv=None):
    args = parse_args(argv)
    from vssm_mm.engine.allocator import reuse_freed_memory
    reuse_freed_memory()  # as tools/train.py and test.py do (VSSM_MALLOC_DEFAULTS=1: off)
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import vssm_mm  # noqa: F401
    from vssm_mm.analysis.build import build_model
    if not osp.isfile(args.config):
        sys.exit(f'config not found: {args.config}')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device is visible; use --device cpu')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        from mmengine.config import DictAction
        options = argparse.Namespace()
        DictAction(['--cfg-options'], 'cfg_options')(None, options, args.cfg_options)
        cfg.merge_from_dict(options.cfg_options)
    model, scope = build_model(cfg)
    init_default_scope(scope)
    height, width = args.shape or DEFAULT_SHAPES[scope]
    batch = args.batch_size or (64 if scope == 'mmpretrain' and args.device != 'cpu' else 2)
    model = model.to(args.device)
    inputs, samples = fake_batch(scope, batch, height, width, _num_classes(cfg, scope),
                                 args.device)
    results = []
    for mode in args.modes:
        for row in time_mode(model, scope, mode, inputs, samples, args.device, args.warmup,
                             args.repeat, args.amp, args.scan_backend):
            row.update(config=args.config, device=args.device, batch_size=batch,
                       input=[height, width], amp=args.amp)
            results.append(row)
    dev = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'
    several = len(args.scan_backend) > 1
    print(f'{args.config} on {dev}, batch {batch}, input {height}x{width}, '
          f'scan backend {" / ".join(args.scan_backend)}'
          f'{" (interleaved)" if several else ""}{", amp" if args.amp else ""}')
    backend_col = f" {'backend':>9s}" if several else ''
    speedup_col = f" {'speed-up':>9s}" if several else ''
    print(f"{'mode':10s}{backend_col} {'images/s':>10s} {'(min-max)':>17s} {'ms/step':>9s} "
          f"{'peak MB':>9s}{speedup_col}")
    for r in results:
        backend = f" {r['scan_backend']:>9s}" if several else ''
        speedup = f" {r['speedup_over_first']:8.2f}x" if several else ''
        print(f"{r['mode']:10s}{backend} {r['images_per_s']:10.2f} "
              f"({r['min_images_per_s']:6.2f}-{r['max_images_per_s']:6.2f}) "
              f"{r['ms_per_step']:9.1f} {r['peak_memory_mb']:9.0f}{speedup}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
