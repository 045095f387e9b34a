"""tools/train.py, test.py and dist_train.sh on stock mm* models and generated data (CPU)."""
import glob
import os
import os.path as osp

import pytest
import torch
from vssm_testing import REPO, free_port, has_mm_stack, run_tool

CONFIGS = {
    'mmpretrain': 'tests/configs/plumbing_cls.py',
    'mmdet': 'tests/configs/plumbing_det.py',
    'mmseg': 'tests/configs/plumbing_seg.py',
}


def _require(library):
    if not has_mm_stack(library):
        pytest.skip(f'{library} with mmcv ops is not installed')


@pytest.mark.parametrize('library', list(CONFIGS))
def test_train_then_test(library, demo_data, tmp_path):
    """Two training iterations with validation, then tools/test.py on the checkpoint."""
    _require(library)
    env = {'VSSM_DEMO_DATA': str(demo_data)}
    work_dir = tmp_path / 'work'
    run_tool(['tools/train.py', CONFIGS[library], '--work-dir', str(work_dir)], env=env)
    ckpt = work_dir / 'iter_2.pth'
    assert ckpt.is_file(), sorted(p.name for p in work_dir.iterdir())
    out = tmp_path / 'preds.pkl'
    result = run_tool(['tools/test.py', CONFIGS[library], str(ckpt), '--work-dir',
                       str(tmp_path / 'test'), '--out', str(out)], env=env)
    assert out.is_file()
    metric = {'mmpretrain': 'accuracy/top1', 'mmdet': 'coco/bbox_mAP', 'mmseg': 'mIoU'}[library]
    assert metric in result.stdout + result.stderr


def test_validate_before_train_with_save_best(demo_data, tmp_path):
    """The validation at iteration 0 runs after the checkpoint hook is set up (it crashed
    when it ran first), and save_best leaves one complete best checkpoint, no temporary file."""
    _require('mmpretrain')
    work_dir = tmp_path / 'work'
    result = run_tool(['tools/train.py', 'tests/configs/plumbing_cls_best.py', '--work-dir',
                       str(work_dir)], env={'VSSM_DEMO_DATA': str(demo_data)})
    assert 'at 0 iter is saved to best_accuracy_top1_iter_0.pth' in result.stdout + result.stderr
    from vssm_mm.engine.checkpointing import is_complete_checkpoint
    best = sorted(work_dir.glob('best_*.pth'))
    assert len(best) == 1 and is_complete_checkpoint(str(best[0])), best
    assert not list(work_dir.glob('*.tmp'))


def test_resume_continues_where_it_stopped(demo_data, tmp_path):
    """2 iterations + resume to 4 gives the same weights and optimizer state as 4 straight.

    The pipeline is made deterministic (no random crop/flip, no shuffling) so that any
    difference can only come from a resume that lost the iteration count, the optimizer
    state or the weights.
    """
    _require('mmpretrain')
    env = {'VSSM_DEMO_DATA': str(demo_data)}
    config = 'tests/configs/plumbing_cls_deterministic.py'
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    run_tool(['tools/train.py', config, '--work-dir', str(straight),
              '--cfg-options', 'train_cfg.max_iters=4'], env=env)
    # "Interrupted" after two iterations, then resumed from the work dir with the full length.
    run_tool(['tools/train.py', config, '--work-dir', str(resumed),
              '--cfg-options', 'train_cfg.max_iters=2'], env=env)
    result = run_tool(['tools/train.py', config, '--work-dir', str(resumed),
                       '--resume', '--cfg-options', 'train_cfg.max_iters=4'], env=env)
    assert 'resumed epoch: 0, iter: 2' in result.stdout + result.stderr

    from vssm_mm.checkpoint import safe_load
    a, b = safe_load(straight / 'iter_4.pth'), safe_load(resumed / 'iter_4.pth')
    assert a['meta']['iter'] == b['meta']['iter'] == 4
    for key, value in a['state_dict'].items():
        torch.testing.assert_close(b['state_dict'][key], value, rtol=1e-5, atol=1e-6,
                                   msg=f'weights differ at {key}')
    momenta_a = [s['momentum_buffer'] for s in a['optimizer']['state'].values()]
    momenta_b = [s['momentum_buffer'] for s in b['optimizer']['state'].values()]
    assert len(momenta_a) == len(momenta_b) > 0
    for x, y in zip(momenta_a, momenta_b):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
    # And the resume really started from the saved state: one fresh 2-iteration run differs.
    c = safe_load(resumed / 'iter_2.pth')
    assert any(not torch.equal(c['state_dict'][k], v) for k, v in b['state_dict'].items()
               if v.is_floating_point())


def test_dist_train_two_processes(demo_data, tmp_path):
    """tools/dist_train.sh with 2 CPU processes (gloo) finishes and writes a checkpoint."""
    _require('mmpretrain')
    work_dir = tmp_path / 'dist'
    result = run_tool(['bash', 'tools/dist_train.sh', CONFIGS['mmpretrain'], '2', '--work-dir',
                       str(work_dir), '--cfg-options', 'val_cfg=None', 'val_dataloader=None',
                       'val_evaluator=None', 'train_cfg.val_interval=1000'],
                      env={'VSSM_DEMO_DATA': str(demo_data), 'PORT': str(free_port()),
                           'OMP_NUM_THREADS': '1'})
    assert (work_dir / 'iter_2.pth').is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    logs = glob.glob(osp.join(work_dir, '*', '*.log'))
    assert logs and any('Distributed launcher: pytorch' in open(p).read() or
                        'world_size: 2' in open(p).read() for p in logs)


def test_train_rejects_missing_config():
    result = run_tool(['tools/train.py', 'configs/does_not_exist.py'], check=False)
    assert result.returncode == 2
    assert 'config not found' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_kill_at_random_moments_then_resume_loses_nothing(demo_data, tmp_path):
    """kill -9 during a short training, --resume, again and again: every resume continues.

    Checkpoints every iteration with max_keep_ckpts=1, so most kills land in or near a save.
    """
    import random
    import re
    import subprocess
    import sys
    import time

    _require('mmpretrain')
    max_iters = 40
    work_dir = tmp_path / 'work'
    cmd = [sys.executable, 'tools/train.py', CONFIGS['mmpretrain'], '--work-dir', str(work_dir),
           '--resume', '--cfg-options', f'train_cfg.max_iters={max_iters}',
           f'train_cfg.val_interval={max_iters}', 'default_hooks.checkpoint.max_keep_ckpts=1']
    env = dict(os.environ, VSSM_DEMO_DATA=str(demo_data), PYTHONWARNINGS='ignore',
               OMP_NUM_THREADS='1')
    rng = random.Random(0)
    resumed_at, kills = [], 0
    for _ in range(8):
        log = open(tmp_path / f'run{kills}.log', 'w+')
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(rng.uniform(2.0, 14.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        log.seek(0)
        text = log.read()
        assert proc.returncode in (0, -9), text[-4000:]
        resumed_at += [int(n) for n in re.findall(r'resumed epoch: \d+, iter: (\d+)', text)]
        if proc.returncode == 0:
            break
    final = run_tool(cmd, env={'VSSM_DEMO_DATA': str(demo_data), 'OMP_NUM_THREADS': '1'})
    resumed_at += [int(n) for n in re.findall(r'resumed epoch: \d+, iter: (\d+)',
                                              final.stdout + final.stderr)]
    assert kills >= 3 and resumed_at, (kills, resumed_at)
    assert resumed_at == sorted(resumed_at)  # never went back to an older checkpoint
    from vssm_mm.checkpoint import safe_load
    assert safe_load(work_dir / f'iter_{max_iters}.pth')['meta']['iter'] == max_iters
    assert not list(work_dir.glob('*.tmp'))
