"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""
import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def has_mm_stack(*packages):
    """True when mmcv with compiled ops and the given mm* packages import.

    With VSSM_REQUIRE_MM_STACK=1 (set by `make test`, which installs the stack first) a
    missing package is an error instead of a reason to skip, so CI cannot go green by skipping.
    """
    try:
        import mmcv.ops  # noqa: F401
        for name in packages:
            __import__(name)
    except Exception as err:  # ImportError, or the version asserts of mmdet/mmseg
        if os.environ.get('VSSM_REQUIRE_MM_STACK') == '1':
            raise RuntimeError(f'the OpenMMLab stack is required here but failed to import: {err!r}')
        return False
    return True


REQUIRE_GPU_ENV = 'VSSM_REQUIRE_GPU'


def gpu_required():
    """True under VSSM_REQUIRE_GPU=1 (set by tools/gpu_check.py on a GPU machine).

    Then tests/conftest.py turns every skipped test into a failure, except tests marked
    ``cpu_only`` (those that only make sense without a GPU), and stops the session at once when
    no CUDA device is visible: a missing GPU, Triton or CUDA extension can never pass green.
    """
    return os.environ.get(REQUIRE_GPU_ENV) == '1'


def missing_gpu_reason():
    """Why this process cannot run GPU tests (None when a CUDA device is visible)."""
    import torch
    if not torch.cuda.is_available():
        return (f'{REQUIRE_GPU_ENV}=1 but torch {torch.__version__} sees no CUDA device '
                f'(torch.version.cuda={torch.version.cuda}); run on a GPU machine or unset it')
    return None


def gpu_scan_tolerance(dtype, length=0):
    """max|gpu - reference| / max|reference| allowed for a selective scan on a GPU.

    16-bit dtypes: two units in the last place of the stored dtype (REL_TOL of
    tests/ops/test_selective_scan.py), as both sides compute in fp32 and only the final
    rounding differs. fp32: the CUDA extension is built with --use_fast_math and Triton's exp
    lowers to the same approximate ex2 instruction, so exp/log/division carry up to ~2^-21
    relative error instead of ~2^-24; the state recurrence carries such an error over its decay
    horizon (1 / (dt |A|), hundreds of tokens at the smallest dt * |A|), and dA, dD, ddelta_bias
    and dB/dC are sums over batch x tokens (x channels of a group) accumulated with fp32 atomics
    in another order. 3e-4 (6e-4 beyond 5000 tokens) of the largest value is of the order of
    mamba's own fp32 kernel tests (rtol 6e-4, atol 2e-3, elementwise), but measured against the
    largest value, which stays meaningful for gradients that cancel to near zero. The kernels'
    algorithm is held to 2e-5 on the CPU (tests/ops/test_cuda_kernel_emulation.py, exact math),
    so these looser bounds only absorb the hardware's approximations.
    """
    import torch
    two_ulps = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
    fp32 = 6e-4 if length > 5000 else 3e-4
    return max(two_ulps.get(dtype, 0.0), fp32)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_tool(args, env=None, timeout=600, check=True):
    """Run a command from the repository root with the test interpreter; return the result."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault('PYTHON', sys.executable)
    full_env['PYTHONWARNINGS'] = 'ignore'
    if args and args[0].endswith('.py'):
        args = [sys.executable] + list(args)
    result = subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'command failed ({result.returncode}): {" ".join(map(str, args))}\n'
                             f'--- stdout ---\n{result.stdout[-6000:]}\n'
                             f'--- stderr ---\n{result.stderr[-6000:]}')
    return result


DEMO_DATASETS = {'cls': 'demo_cls.py', 'det': 'demo_coco_instance.py', 'seg': 'demo_ade.py'}


def smoke_config(config_path, task, demo_root, work_dir, iters=1, validate=True):
    """A real family config shrunk to ``iters`` CPU iterations on the generated data.

    Everything that defines the model (backbone, neck, heads, losses, optimizer type) stays as
    in the real config; only the data, class counts, schedule length and pretrained loading
    change.
    """
    from mmengine.config import Config
    os.environ['VSSM_DEMO_DATA'] = str(demo_root)
    cfg = Config.fromfile(str(config_path))
    demo = Config.fromfile(str(REPO / 'configs' / '_base_' / 'datasets' / DEMO_DATASETS[task]))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'test_evaluator'):
        cfg[key] = demo[key]
    cfg.model.backbone.init_cfg = None
    if task == 'cls':
        cfg.data_preprocessor = demo.data_preprocessor
        cfg.model.head.num_classes = demo.num_classes
        cfg.model.pop('data_preprocessor', None)
    elif task == 'det':
        cfg.model.roi_head.bbox_head.num_classes = len(demo.metainfo['classes'])
        cfg.model.roi_head.mask_head.num_classes = len(demo.metainfo['classes'])
    else:
        num_classes = len(demo.metainfo['classes'])
        cfg.model.data_preprocessor.size = demo.crop_size
        cfg.model.decode_head.num_classes = num_classes
        if cfg.model.get('auxiliary_head'):
            cfg.model.auxiliary_head.num_classes = num_classes
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
    if validate:
        cfg.val_cfg = dict(type='ValLoop')
    else:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = dict(type='TestLoop')
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1, log_metric_by_epoch=False)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=iters)
    cfg.pop('auto_scale_lr', None)
    cfg.randomness = dict(seed=0)  # the same run on every machine
    cfg.work_dir = str(work_dir)
    cfg.launcher = 'none'
    return cfg


def run_smoke_training(cfg):
    """Train in-process; return the runner's final training loss dict and the runner."""
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def read_key_dump(name):
    """``{key: shape}`` from tests/fixtures/keys/<name>.txt (official state-dict dumps).

    Lines are ``key<TAB>shape<TAB>dtype``; ``#`` lines are comments. A dump may hold a second
    section after a ``# ----`` line (returned under the key ``'__sections__'`` as a list of
    dicts, the first being the main one).
    """
    sections = [{}]
    path = REPO / 'tests' / 'fixtures' / 'keys' / f'{name}.txt'
    for line in path.read_text().splitlines():
        if line.startswith('# ----'):
            sections.append({})
        if line.startswith('#') or not line.strip():
            continue
        key, shape, _ = line.split('\t')
        sections[-1][key] = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
    return sections[0] if len(sections) == 1 else dict(sections[0], __sections__=sections)


def official_state_dict(spec, dump, ours):
    """The official checkpoint that converts (with ``spec``) into exactly ``ours``.

    Inverts the converter generically: every element of an official tensor (shapes from the
    key dump ``dump``) is tagged with its own index, the tags are converted, and the result
    says where each of our values comes from. Works for any key map that moves elements
    (renames, stacking, concatenation, reordering, reshapes).
    """
    from vssm_mm.checkpoint.convert import convert_state_dict
    shapes = {k: s for k, s in read_key_dump(dump).items() if k != '__sections__'}
    tags, offset = {}, 0
    for key, shape in shapes.items():
        count = math.prod(shape)
        tags[key] = torch.arange(offset, offset + count, dtype=torch.float64).view(shape)
        offset += count
    converted, _ = convert_state_dict(tags, spec)
    assert set(converted) == set(ours), set(converted) ^ set(ours)
    values = torch.zeros(offset, dtype=torch.float64)
    for key, tag in converted.items():
        values[tag.flatten().long()] = ours[key].double().flatten()
    return {key: values[tag.flatten().long()].view(tag.shape).to(
        torch.long if key.endswith('num_batches_tracked') else torch.float32)
        for key, tag in tags.items()}


def load_tool(name):
    """tools/<name>.py as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
