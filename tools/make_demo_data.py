"""Generate tiny, deterministic datasets of coloured shapes on textured backgrounds.

One scene generator, three layouts:

* ``cls/``  ImageNet-style folders (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``, ``meta/``
  annotation lists and ``classes.txt``): one shape per image; its class is the label.
* ``coco/`` COCO instance annotations with polygon masks (``annotations/instances_{train,val}.json``,
  images in ``train/`` and ``val/``): one to three shapes per image.
* ``ade/``  ADE20K-style semantic segmentation (``images/{training,validation}/*.jpg``,
  ``annotations/{training,validation}/*.png``): label 0 is "unlabelled" (reduce_zero_label
  ignores it), 1 is the background, 2.. are the shape classes, as in ADE20K's encoding.

    python tools/make_demo_data.py --out data/demo
    python tools/make_demo_data.py --out data/demo --num-train 64 --num-val 16 --size 128 96

The same arguments always give the same bytes on disk (seeded numpy, deterministic JPEG/PNG).
"""
import argparse
import json
import math
import os
import os.path as osp
import sys

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('circle', 'square', 'triangle')
# A class-typical hue, jittered per instance: the task is easy enough to learn in minutes on a CPU.
BASE_COLOURS = {'circle': (220, 60, 50), 'square': (50, 170, 70), 'triangle': (60, 90, 220)}


def _texture(rng, width, height):
    """A smooth random background: low-frequency noise, stripes and a colour gradient."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(90, 170, size=3)
    img = np.empty((height, width, 3), np.float32)
    freq = rng.uniform(0.05, 0.3)
    angle = rng.uniform(0, math.pi)
    stripes = np.sin(freq * (xs * math.cos(angle) + ys * math.sin(angle)))
    coarse = rng.normal(0, 1, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    coarse = np.kron(coarse, np.ones((8, 8, 1), np.float32))[:height, :width]
    for c in range(3):
        img[..., c] = base[c] + 18 * stripes + 10 * coarse[..., c] + 20 * (xs / width - 0.5)
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(shape, cx, cy, radius, angle, points=24):
    if shape == 'circle':
        n, phase = points, 0.0
    elif shape == 'square':
        n, phase = 4, math.pi / 4
    else:
        n, phase = 3, -math.pi / 2
    return [(cx + radius * math.cos(phase + angle + 2 * math.pi * k / n),
             cy + radius * math.sin(phase + angle + 2 * math.pi * k / n)) for k in range(n)]


def _colour(rng, shape):
    return tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in BASE_COLOURS[shape])


def make_scene(rng, width, height, num_shapes):
    """Draw ``num_shapes`` non-overlapping shapes.

    Returns:
        tuple: RGB uint8 image (H, W, 3), label map (H, W) uint8 with 0 = background and
        1.. = class index + 1, and a list of instances ``dict(label, polygon, bbox)``.
    """
    image = Image.fromarray(_texture(rng, width, height))
    labels = Image.new('L', (width, height), 0)
    draw, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    instances, boxes = [], []
    min_side = min(width, height)
    for _ in range(num_shapes):
        for _attempt in range(50):
            shape = CLASSES[rng.integers(len(CLASSES))]
            radius = rng.uniform(0.12, 0.3) * min_side if num_shapes > 1 else \
                rng.uniform(0.25, 0.4) * min_side
            cx = rng.uniform(radius + 1, width - radius - 1)
            cy = rng.uniform(radius + 1, height - radius - 1)
            polygon = _polygon(shape, cx, cy, radius, rng.uniform(0, 2 * math.pi))
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            box = (min(xs), min(ys), max(xs), max(ys))
            if all(box[2] < b[0] - 2 or box[0] > b[2] + 2 or box[3] < b[1] - 2 or box[1] > b[3] + 2
                   for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        label = CLASSES.index(shape)
        draw.polygon(polygon, fill=_colour(rng, shape))
        draw_labels.polygon(polygon, fill=label + 1)
        instances.append(dict(label=label, polygon=polygon, bbox=box))
    return np.asarray(image), np.asarray(labels), instances


def _rng(seed, split, index):
    return np.random.default_rng([seed, {'train': 0, 'val': 1}[split], index])


def _save_jpeg(array, path):
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def write_classification(root, num, width, height, seed):
    for split in ('train', 'val'):
        lines = []
        for i in range(num[split]):
            image, _, instances = make_scene(_rng(seed, split, i), width, height, 1)
            cls = CLASSES[instances[0]['label']]
            rel = f'{cls}/{split}_{i:05d}.JPEG'
            _save_jpeg(image, osp.join(root, split, rel))
            lines.append(f'{rel} {instances[0]["label"]}')
        os.makedirs(osp.join(root, 'meta'), exist_ok=True)
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(CLASSES) + '\n')


def write_coco(root, num, width, height, seed):
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)]
    for split in ('train', 'val'):
        images, annotations = [], []
        for i in range(num[split]):
            rng = _rng(seed + 1, split, i)
            image, _, instances = make_scene(rng, width, height, int(rng.integers(1, 4)))
            name = f'{split}_{i:05d}.jpg'
            _save_jpeg(image, osp.join(root, split, name))
            images.append(dict(id=i + 1, file_name=name, width=width, height=height))
            for inst in instances:
                x0, y0, x1, y1 = inst['bbox']
                flat = [round(v, 2) for point in inst['polygon'] for v in point]
                # Shoelace area of the polygon, which is what the mask covers.
                pts = np.asarray(inst['polygon'])
                area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) -
                                 np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=inst['label'] + 1,
                    bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    area=round(float(area), 2), segmentation=[flat], iscrowd=0))
        os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def write_ade(root, num, width, height, seed):
    folders = {'train': 'training', 'val': 'validation'}
    for split in ('train', 'val'):
        for i in range(num[split]):
            rng = _rng(seed + 2, split, i)
            image, labels, _ = make_scene(rng, width, height, int(rng.integers(1, 4)))
            name = f'{split}_{i:05d}'
            _save_jpeg(image, osp.join(root, 'images', folders[split], name + '.jpg'))
            # ADE20K encoding: 0 unlabelled, 1 background, 2.. shapes.
            path = osp.join(root, 'annotations', folders[split], name + '.png')
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray((labels + 1).astype(np.uint8)).save(path)
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(('background',) + CLASSES) + '\n')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--tasks', nargs='+', default=['cls', 'coco', 'ade'],
                        choices=['cls', 'coco', 'ade'], help='which layouts to write')
    parser.add_argument('--num-train', type=int, default=96, help='training images per task')
    parser.add_argument('--num-val', type=int, default=24, help='validation images per task')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 96), metavar=('W', 'H'),
                        help='image width and height')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true',
                        help='write into an existing non-empty task directory')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    width, height = args.size
    if width < 32 or height < 32:
        sys.exit('--size: width and height must be at least 32 pixels')
    if args.num_train < 1 or args.num_val < 1:
        sys.exit('--num-train and --num-val must be at least 1')
    num = dict(train=args.num_train, val=args.num_val)
    writers = dict(cls=write_classification, coco=write_coco, ade=write_ade)
    for task in args.tasks:
        root = osp.join(args.out, task)
        if osp.isdir(root) and os.listdir(root) and not args.force:
            sys.exit(f'{root} exists and is not empty; choose another --out or pass --force '
                     '(existing files with the same names are overwritten)')
        writers[task](root, num, width, height, args.seed)
        print(f'wrote {task}: {root}')


if __name__ == '__main__':
    main()
