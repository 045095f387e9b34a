"""Train a model on the generated shapes dataset and show that it learned.

    python tools/run_demo.py                 # MSVMamba-Nano Mask R-CNN (what `make demo` runs)
    python tools/run_demo.py --task cls      # classification (`make demo-cls`)
    python tools/run_demo.py --task seg      # UperNet semantic segmentation (`make demo-seg`)

Steps: generate the data (tools/make_demo_data.py) unless it exists, train through
tools/train.py (the untrained model is evaluated first, at iteration 0), evaluate, then write
``curves.png`` (loss and metric against iterations) and ``predictions.png`` (predictions drawn
on validation images) into the work directory and print the metrics before and after training.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = {
    'det': dict(config='configs/demo/msvmamba_nano_mask_rcnn_demo.py',
                metrics=('coco/bbox_mAP', 'coco/segm_mAP'), data='coco'),
    'cls': dict(config='configs/demo/msvmamba_nano_cls_demo.py', metrics=('accuracy/top1', ),
                data='cls'),
    'seg': dict(config='configs/demo/msvmamba_nano_upernet_demo.py', metrics=('mIoU', ),
                data='ade'),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--task', choices=sorted(TASKS), default='det')
    parser.add_argument('--data', default=osp.join(ROOT, 'data', 'demo'),
                        help='generated dataset root (created if missing)')
    parser.add_argument('--work-dir', help='default: work_dirs/demo_<task>')
    parser.add_argument('--iters', type=int, help='training iterations (default: the config\'s)')
    parser.add_argument('--val-interval', type=int, help='validate every N iterations')
    parser.add_argument('--num-train', type=int, default=96, help='generated training images')
    parser.add_argument('--num-val', type=int, default=24, help='generated validation images')
    parser.add_argument('--min-gain', type=float, default=None,
                        help='exit with an error unless the first metric improves by this much')
    return parser.parse_args(argv)


def run(cmd, env):
    print('$', ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def read_scalars(work_dir):
    """(train records, val records) from the newest run's vis_data/scalars.json."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')),
                   key=osp.getmtime)
    if not files:
        raise FileNotFoundError(f'no scalars.json under {work_dir}: did training run?')
    train, val = [], []
    with open(files[-1]) as f:
        for line in f:
            record = json.loads(line)
            (train if 'loss' in record else val).append(record)
    return train, val


def plot_curves(train, val, metrics, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot([r['step'] for r in train], [r['loss'] for r in train], color='tab:blue')
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel('training loss')
    ax_loss.grid(alpha=0.3)
    for metric in metrics:
        points = [(r['step'], r[metric]) for r in val if metric in r]
        ax_metric.plot([p[0] for p in points], [p[1] for p in points], marker='o', label=metric)
    ax_metric.set_xlabel('iteration')
    ax_metric.set_ylabel('validation metric')
    ax_metric.grid(alpha=0.3)
    ax_metric.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(image_dir, path, limit=8):
    """Tile the first drawn prediction images into one picture."""
    from PIL import Image
    files = sorted(glob.glob(osp.join(image_dir, '**', '*.[jp][pn]g'), recursive=True))[:limit]
    if not files:
        return None
    images = [Image.open(f).convert('RGB') for f in files]
    width = max(i.width for i in images)
    height = max(i.height for i in images)
    cols = 2 if len(images) > 1 else 1
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new('RGB', (cols * width, rows * height), 'white')
    for k, image in enumerate(images):
        sheet.paste(image, ((k % cols) * width, (k // cols) * height))
    scale = max(1, round(1024 / sheet.width))
    sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
    sheet.save(path)
    return path


def draw_classification(preds_file, out_dir, limit=8, size=192):
    """Each validation image, enlarged, with its predicted and true class written under it."""
    import pickle

    from PIL import Image, ImageDraw
    with open(preds_file, 'rb') as f:  # written by tools/test.py in this run
        predictions = pickle.load(f)
    with open(osp.join(osp.dirname(osp.dirname(predictions[0]['img_path'])), '..',
                       'classes.txt')) as f:
        classes = f.read().split()
    os.makedirs(out_dir, exist_ok=True)
    for k, pred in enumerate(predictions[:limit]):
        image = Image.open(pred['img_path']).convert('RGB').resize((size, size), Image.NEAREST)
        canvas = Image.new('RGB', (size, size + 36), 'white')
        canvas.paste(image, (0, 0))
        label, truth = int(pred['pred_label']), int(pred['gt_label'])
        score = float(pred['pred_score'][label])
        colour = (0, 130, 0) if label == truth else (200, 0, 0)
        draw = ImageDraw.Draw(canvas)
        draw.text((6, size + 4), f'pred: {classes[label]} ({score:.2f})', fill=colour)
        draw.text((6, size + 19), f'true: {classes[truth]}', fill=(0, 0, 0))
        canvas.save(osp.join(out_dir, f'{k:03d}.png'))


def main(argv=None):
    args = parse_args(argv)
    task = TASKS[args.task]
    work_dir = osp.abspath(args.work_dir or osp.join(ROOT, 'work_dirs', f'demo_{args.task}'))
    env = dict(os.environ, VSSM_DEMO_DATA=osp.abspath(args.data), PYTHONWARNINGS='ignore')
    python = sys.executable

    if not osp.isdir(osp.join(args.data, task['data'])):
        run([python, 'tools/make_demo_data.py', '--out', args.data, '--tasks', task['data'],
             '--num-train', str(args.num_train), '--num-val', str(args.num_val)], env)
    else:
        print(f"using the generated data in {osp.join(args.data, task['data'])}")

    options = []
    if args.iters:
        options += [f'train_cfg.max_iters={args.iters}',
                    f'default_hooks.checkpoint.interval={args.iters}']
        warmup = max(1, args.iters // 8)  # keep the warm-up + cosine shape at any length
        options += [f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}',
                    f'param_scheduler.1.end={args.iters}']
    if args.val_interval:
        options += [f'train_cfg.val_interval={args.val_interval}']
    cmd = [python, 'tools/train.py', task['config'], '--work-dir', work_dir]
    run(cmd + (['--cfg-options'] + options if options else []), env)

    train, val = read_scalars(work_dir)
    curves = osp.join(work_dir, 'curves.png')
    plot_curves(train, val, task['metrics'], curves)

    checkpoints = sorted(glob.glob(osp.join(work_dir, 'iter_*.pth')), key=osp.getmtime)
    show_dir = osp.join(work_dir, 'predictions')
    if args.task == 'cls':
        # mmpretrain's hook draws one image in thousands, in small print: draw them here.
        preds = osp.join(work_dir, 'predictions.pkl')
        if osp.exists(preds):
            os.remove(preds)  # written by this script on an earlier run
        run([python, 'tools/test.py', task['config'], checkpoints[-1], '--work-dir',
             osp.join(work_dir, 'test'), '--out', preds], env)
        draw_classification(preds, show_dir)
    else:
        run([python, 'tools/test.py', task['config'], checkpoints[-1], '--work-dir',
             osp.join(work_dir, 'test'), '--show-dir', show_dir], env)
    sheet = contact_sheet(show_dir, osp.join(work_dir, 'predictions.png'))

    first = task['metrics'][0]
    before = next((r for r in val if r.get('step') == 0 and first in r), None)
    after = [r for r in val if first in r][-1]
    print('\n' + '=' * 64)
    print(f'{"metric":24s} {"untrained":>12s} {"trained":>12s}')
    for metric in task['metrics']:
        b = before.get(metric, float('nan')) if before else float('nan')
        print(f'{metric:24s} {b:12.3f} {after.get(metric, float("nan")):12.3f}')
    print(f'\ncurves:      {curves}')
    if sheet:
        print(f'predictions: {sheet}  (every drawn image: {show_dir})')
    print(f'checkpoint:  {checkpoints[-1]}')
    print('=' * 64)
    if args.min_gain is not None:
        if before is None:
            sys.exit(f'--min-gain: the untrained model was not evaluated, so {first} has no '
                     'baseline to compare with')
        gain = after[first] - before[first]
        if gain < args.min_gain:
            sys.exit(f'{first} improved by {gain:.3f}, less than --min-gain {args.min_gain}')


if __name__ == '__main__':
    main()
