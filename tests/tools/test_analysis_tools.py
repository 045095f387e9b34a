"""get_flops.py, benchmark.py, image_demo.py and the demo pipeline (reduced) on CPU."""
import json

import pytest
from PIL import Image
from vssm_testing import REPO, has_mm_stack, load_tool, run_tool


def _require(*libs):
    if not has_mm_stack(*libs):
        pytest.skip('the OpenMMLab stack is not installed')


def test_get_flops_matches_official_count(tmp_path):
    """MSVMamba-Nano: 6,864,136 parameters; the official code counts 0.883 GFLOPs at 224."""
    _require('mmpretrain')
    out = tmp_path / 'flops.json'
    result = run_tool(['tools/get_flops.py', 'configs/msvmamba/nano_in1k.py', '--json', str(out)])
    row = json.loads(out.read_text())[0]
    assert row['params'] == 6_864_136
    assert abs(row['flops'] / 0.8830e9 - 1) < 0.02, row['flops']
    assert 'reported: params 7M, FLOPs 0.9G' in result.stdout


def test_get_flops_small_shape_detection(tmp_path):
    _require('mmdet')
    out = tmp_path / 'flops.json'
    run_tool(['tools/get_flops.py', 'configs/msvmamba/micro_coco.py', '--shape', '128', '160',
              '--json', str(out)])
    row = json.loads(out.read_text())[0]
    assert row['params'] == 31_518_192 and row['input'] == [128, 160] and row['flops'] > 1e9


@pytest.mark.parametrize('config,shape', [('configs/msvmamba/nano_in1k.py', ['64', '64']),
                                          ('configs/msvmamba/nano_ade20k.py', ['64', '64'])])
def test_benchmark_cpu(config, shape, tmp_path):
    _require('mmpretrain', 'mmseg')
    out = tmp_path / 'bench.json'
    result = run_tool(['tools/benchmark.py', config, '--device', 'cpu', '--batch-size', '2',
                       '--shape', *shape, '--warmup', '1', '--repeat', '2', '--json', str(out)])
    rows = json.loads(out.read_text())
    assert [r['mode'] for r in rows] == ['inference', 'train']
    assert all(r['images_per_s'] > 0 and r['peak_memory_mb'] > 0 for r in rows)
    assert 'images/s' in result.stdout


def test_benchmark_interleaves_scan_backends(monkeypatch):
    """With several scan backends every timed iteration runs one step per backend in turn (the
    backend each step saw is recorded), each backend gets its row and its speed-up over the
    first, and the environment is restored."""
    import torch
    bench = load_tool('benchmark')
    monkeypatch.setenv('VSSM_SCAN_BACKEND', 'reference')
    seen = []

    class Model(torch.nn.Module):
        def forward(self, inputs, samples, mode):
            import os
            seen.append(os.environ.get('VSSM_SCAN_BACKEND'))
            return inputs

    rows = bench.time_mode(Model(), 'mmpretrain', 'inference', torch.zeros(2, 3, 4, 4), [],
                           'cpu', warmup=1, repeat=3, amp=False, backends=('cpu', 'auto'))
    # warm-up per backend, then alternating; 'auto' means what the environment said.
    assert seen == ['cpu', 'reference'] + ['cpu', 'reference'] * 3
    assert [r['scan_backend'] for r in rows] == ['cpu', 'auto']
    assert rows[0]['speedup_over_first'] == 1.0 and rows[1]['speedup_over_first'] > 0
    import os
    assert os.environ['VSSM_SCAN_BACKEND'] == 'reference'


def test_benchmark_compares_backends_in_one_run(tmp_path):
    _require('mmpretrain')
    out = tmp_path / 'bench.json'
    result = run_tool(['tools/benchmark.py', 'configs/msvmamba/nano_in1k.py', '--device', 'cpu',
                       '--batch-size', '1', '--shape', '32', '32', '--warmup', '1', '--repeat',
                       '2', '--modes', 'inference', '--scan-backend', 'reference', 'cpu',
                       '--json', str(out)])
    rows = json.loads(out.read_text())
    assert [(r['mode'], r['scan_backend']) for r in rows] == [('inference', 'reference'),
                                                              ('inference', 'cpu')]
    assert 'speed-up' in result.stdout and 'interleaved' in result.stdout
    bad = run_tool(['tools/benchmark.py', 'configs/msvmamba/nano_in1k.py', '--scan-backend',
                    'cpu', 'cpu'], check=False)
    assert bad.returncode != 0 and 'twice' in bad.stderr


@pytest.mark.parametrize('task,config,image,expect', [
    ('mmpretrain', 'msvmamba_nano_cls_demo.py', 'cls/val', 'top-1'),
    ('mmdet', 'msvmamba_nano_mask_rcnn_demo.py', 'coco/val', 'objects above'),
    ('mmseg', 'msvmamba_nano_upernet_demo.py', 'ade/images/validation', 'wrote'),
])
def test_image_demo_writes_a_picture(task, config, image, expect, demo_data, tmp_path):
    _require(task)
    import importlib
    import os

    import torch
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    os.environ['VSSM_DEMO_DATA'] = str(demo_data)
    cfg = Config.fromfile(str(REPO / 'configs' / 'demo' / config))
    init_default_scope(task)
    model = revert_sync_batchnorm(importlib.import_module(f'{task}.registry').MODELS.build(
        cfg.model))
    ckpt = tmp_path / 'model.pth'
    meta = dict(cfg.metainfo) if 'metainfo' in cfg else dict(
        classes=('circle', 'square', 'triangle'))
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta}}, ckpt)
    picture = sorted(p for p in (demo_data / image).rglob('*') if p.suffix.lower() in
                     ('.jpg', '.jpeg'))[0]
    out = tmp_path / 'result.jpg'
    result = run_tool(['tools/image_demo.py', f'configs/demo/{config}', str(ckpt), str(picture),
                       '--out', str(out), '--device', 'cpu', '--score-thr', '0.0'],
                      env={'VSSM_DEMO_DATA': str(demo_data)})
    assert expect in result.stdout
    drawn = Image.open(out)
    assert drawn.width >= 64 and drawn.height >= 64
    # Never overwrite what a user made.
    again = run_tool(['tools/image_demo.py', f'configs/demo/{config}', str(ckpt), str(picture),
                      '--out', str(out)], env={'VSSM_DEMO_DATA': str(demo_data)}, check=False)
    assert again.returncode != 0 and 'exists' in again.stderr


@pytest.mark.slow
def test_demo_pipeline_reduced(tmp_path):
    """make demo's steps at a few iterations: data, training, curves, drawn predictions."""
    _require('mmdet')
    work = tmp_path / 'work'
    result = run_tool(['tools/run_demo.py', '--task', 'det', '--data', str(tmp_path / 'data'),
                       '--work-dir', str(work), '--iters', '4', '--val-interval', '4',
                       '--num-train', '8', '--num-val', '4'], timeout=900)
    out = result.stdout
    assert 'untrained' in out and 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out
    for name in ('curves.png', 'predictions.png'):
        picture = Image.open(work / name)
        assert picture.width > 200
    assert any(work.glob('iter_4.pth'))


@pytest.mark.slow
def test_demo_learns(tmp_path):
    """make demo-cls, shortened: the trained model is far above the untrained one."""
    _require('mmpretrain')
    iters = 60
    result = run_tool(['tools/run_demo.py', '--task', 'cls', '--data', str(tmp_path / 'data'),
                       '--work-dir', str(tmp_path / 'work'), '--iters', str(iters),
                       '--val-interval', str(iters), '--num-train', '48', '--num-val', '24',
                       '--min-gain', '40'], timeout=900)
    row = next(line for line in result.stdout.splitlines() if line.startswith('accuracy/top1'))
    untrained, trained = (float(x) for x in row.split()[1:3])
    # 3 balanced classes: an untrained model sits near 33%; a learned one well above.
    assert untrained < 60 and trained >= 80 and trained - untrained >= 40, row
