"""What a newcomer or a careless user hits first: clear messages, exit status 2, nothing lost."""
import os
import subprocess
import sys

import pytest
import torch
from vssm_testing import REPO, has_mm_stack, run_tool

UNTOUCHED = 'Nothing was started'


def _require(*libraries):
    if not has_mm_stack(*libraries):
        pytest.skip('the OpenMMLab stack is not installed')


def _run_elsewhere(args, cwd, env=None):
    """Run a tool from another folder (no data/ or checkpoints/ beside it)."""
    full_env = dict(os.environ, PYTHONWARNINGS='ignore', **(env or {}))
    args = [str(REPO / a) if a.startswith(('tools/', 'configs/')) else a for a in args]
    return subprocess.run([sys.executable] + args, cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


def test_first_command_without_coco_or_checkpoint_says_what_to_do(tmp_path):
    _require('mmdet')
    result = _run_elsewhere(['tools/train.py', 'configs/msvmamba/tiny_coco.py',
                             '--work-dir', str(tmp_path / 'work')], tmp_path)
    err = result.stderr
    assert result.returncode == 2, err[-3000:]
    assert 'Traceback' not in err
    for expected in ('annotations/instances_train2017.json', 'train2017',
                     'annotations/instances_val2017.json', 'docs/get_started.md',
                     'train_dataloader.dataset.data_root=', 'checkpoints/msvmamba_tiny_in1k.pth',
                     'convert_checkpoint.py --arch msvmamba-t', UNTOUCHED):
        assert expected in err, (expected, err)
    assert not (tmp_path / 'work').exists() or not any((tmp_path / 'work').iterdir())


def test_groupmamba_imagenet_names_the_teacher_and_the_way_without_it(tmp_path):
    _require('mmpretrain')
    result = _run_elsewhere(['tools/train.py', 'configs/groupmamba/tiny_in1k.py',
                             '--work-dir', str(tmp_path / 'work')], tmp_path)
    err = result.stderr
    assert result.returncode == 2, err[-3000:]
    assert 'checkpoints/regnety_160-a5fe301d.pth' in err
    assert 'model.teacher=None' in err
    import importlib.util
    if importlib.util.find_spec('timm') is None:
        assert 'pip install timm' in err


def test_test_tool_checks_the_test_data(tmp_path):
    _require('mmseg')
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': {}}, ckpt)
    result = _run_elsewhere(['tools/test.py', 'configs/msvmamba/tiny_ade20k.py', str(ckpt)],
                            tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'images/validation' in result.stderr and UNTOUCHED in result.stderr


def _foreign_checkpoint(path):
    """What tools/convert_checkpoint.py writes for EfficientVMamba-T: not an MSVMamba."""
    torch.save({'state_dict': {'backbone.patch_embed.weight': torch.zeros(48, 3, 4, 4),
                               'head.fc.weight': torch.zeros(3, 384)},
                'meta': {'arch': 'efficientvmamba-t', 'backbone': 'EfficientVMamba',
                         'backbone_arch': 'tiny', 'task': 'classification'}}, path)
    return path


def test_evaluating_a_checkpoint_of_another_architecture_fails(demo_data, tmp_path):
    _require('mmpretrain')
    env = {'VSSM_DEMO_DATA': str(demo_data)}
    ckpt = _foreign_checkpoint(tmp_path / 'evmamba.pth')
    config = 'configs/demo/msvmamba_nano_cls_demo.py'
    result = run_tool(['tools/test.py', config, str(ckpt), '--work-dir', str(tmp_path / 't')],
                      env=env, check=False)
    err = result.stderr
    assert result.returncode == 2, err[-3000:]
    assert 'does not fit' in err and '--arch efficientvmamba-t' in err
    assert '--partial-load' in err and 'accuracy/top1' not in result.stdout + err
    assert err.count('\n') < 15, err  # a summary, not hundreds of size-mismatch lines
    partial = run_tool(['tools/test.py', config, str(ckpt), '--work-dir', str(tmp_path / 't'),
                        '--partial-load'], env=env)
    assert 'accuracy/top1' in partial.stdout + partial.stderr


def test_a_checkpoint_without_meta_is_named_by_the_architecture_it_fits(demo_data, tmp_path):
    _require('mmpretrain')
    import vssm_mm.models  # noqa: F401
    from vssm_mm.registry import MODELS
    micro = MODELS.get('MSVMamba')(arch='micro', out_indices=(3, ))
    ckpt = tmp_path / 'micro.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in micro.state_dict().items()}},
               ckpt)
    result = run_tool(['tools/test.py', 'configs/demo/msvmamba_nano_cls_demo.py', str(ckpt),
                       '--work-dir', str(tmp_path / 't')],
                      env={'VSSM_DEMO_DATA': str(demo_data)}, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'fit --arch msvmamba-m' in result.stderr


def test_load_from_must_fit_unless_partial(demo_data, tmp_path):
    _require('mmpretrain')
    env = {'VSSM_DEMO_DATA': str(demo_data)}
    ckpt = _foreign_checkpoint(tmp_path / 'evmamba.pth')
    args = ['tools/train.py', 'configs/demo/msvmamba_nano_cls_demo.py', '--work-dir',
            str(tmp_path / 'w'), '--cfg-options', f'load_from={ckpt}', 'train_cfg.max_iters=1',
            'custom_hooks=[]']
    result = run_tool(args, env=env, check=False)
    assert result.returncode == 2 and 'does not fit' in result.stderr, result.stderr[-3000:]
    run_tool(args[:2] + ['--partial-load'] + args[2:], env=env)
    assert (tmp_path / 'w' / 'iter_1.pth').is_file()


def test_pretrained_init_logs_one_summary_line(tmp_path):
    pytest.importorskip('mmengine')
    from mmengine.logging import MMLogger

    import vssm_mm.models  # noqa: F401
    from vssm_mm.registry import MODELS
    MSVMamba = MODELS.get('MSVMamba')
    source = MSVMamba(arch='nano', out_indices=(3, ))
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    dropped = 'backbone.' + next(iter(source.state_dict()))  # listed first when missing
    state.pop(dropped)
    state['backbone.unused.weight'] = torch.zeros(1)
    ckpt = tmp_path / 'cls.pth'
    torch.save({'state_dict': state}, ckpt)
    model = MSVMamba(arch='nano', out_indices=(0, 1, 2, 3),
                     init_cfg=dict(type='Pretrained', checkpoint=str(ckpt), prefix='backbone.'))
    logger = MMLogger.get_instance('vssm-pretrained-test')
    records = []
    handler = __import__('logging').Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        model.init_weights()
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records if 'tensors of MSVMamba' in r.getMessage()]
    assert len(lines) == 1 and '\n' not in lines[0], [r.getMessage() for r in records]
    assert 'not loaded' in lines[0] and '1 unexpected' in lines[0]
    assert dropped[len('backbone.'):] in lines[0]
    for key, value in source.state_dict().items():
        if f'backbone.{key}' != dropped:
            assert torch.equal(model.state_dict()[key], value), key


def test_amp_on_a_cpu_says_it_needs_a_gpu(tmp_path):
    _require('mmpretrain')
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    result = run_tool(['tools/train.py', 'tests/configs/plumbing_cls.py', '--amp',
                       '--work-dir', str(tmp_path / 'w')], check=False)
    assert result.returncode == 2 and 'needs a GPU' in result.stderr, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr


def test_work_dir_naming_a_file_is_refused(tmp_path):
    _require('mmpretrain')
    afile = tmp_path / 'notes.txt'
    afile.write_text('mine')
    result = run_tool(['tools/train.py', 'tests/configs/plumbing_cls.py', '--work-dir',
                       str(afile)], check=False)
    assert result.returncode == 2 and 'is a file' in result.stderr
    assert afile.read_text() == 'mine'


def test_converter_refuses_a_folder_as_destination_and_leaves_nothing(tmp_path):
    src = tmp_path / 'official.pth'
    torch.save({'model': {'w': torch.ones(1)}}, src)
    dst = tmp_path / 'out'
    dst.mkdir()
    result = run_tool(['tools/convert_checkpoint.py', '--arch', 'msvmamba-t', str(src), str(dst),
                       '--force'], check=False)
    assert result.returncode != 0 and 'is a folder' in result.stderr
    assert list(dst.iterdir()) == [] and not list(tmp_path.glob('*.tmp'))


@pytest.mark.parametrize('content', [b'', os.urandom(2048)], ids=['empty', 'random'])
def test_converter_names_a_bad_source_file(tmp_path, content):
    src = tmp_path / 'download.pth'
    src.write_bytes(content)
    result = run_tool(['tools/convert_checkpoint.py', '--arch', 'msvmamba-t', str(src),
                       str(tmp_path / 'out.pth')], check=False)
    assert result.returncode != 0 and str(src) in result.stderr
    assert 'Traceback' not in result.stderr and not (tmp_path / 'out.pth').exists()
    assert not list(tmp_path.glob('.*tmp'))
