import hashlib
import json
import subprocess
import sys

import numpy as np
from PIL import Image
from vssm_testing import REPO


def _run(out, *extra):
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'make_demo_data.py'), '--out',
                           str(out), '--num-train', '3', '--num-val', '2', *extra],
                          capture_output=True, text=True)


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob('*')):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_and_consistent(tmp_path):
    assert _run(tmp_path / 'a').returncode == 0
    assert _run(tmp_path / 'b').returncode == 0
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _run(tmp_path / 'c', '--seed', '1').returncode == 0
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')

    coco = json.loads((tmp_path / 'a/coco/annotations/instances_train.json').read_text())
    assert len(coco['images']) == 3 and len(coco['categories']) == 3
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        poly = np.asarray(ann['segmentation'][0]).reshape(-1, 2)
        assert poly[:, 0].min() >= x - 0.01 and poly[:, 0].max() <= x + w + 0.01
        assert 0 < ann['area'] <= w * h
        img = coco['images'][ann['image_id'] - 1]
        assert x + w <= img['width'] and y + h <= img['height']

    ann = np.asarray(Image.open(tmp_path / 'a/ade/annotations/training/train_00000.png'))
    assert set(np.unique(ann)) <= {1, 2, 3, 4} and 1 in ann and len(np.unique(ann)) > 1
    lines = (tmp_path / 'a/cls/meta/train.txt').read_text().split()
    assert len(lines) == 6 and (tmp_path / 'a/cls/train' / lines[0]).is_file()


def test_refuses_to_overwrite(tmp_path):
    assert _run(tmp_path / 'a').returncode == 0
    result = _run(tmp_path / 'a')
    assert result.returncode != 0 and 'not empty' in result.stderr
