"""EfficientVMamba: exact sizes, official outputs, checkpoint conversion, configs, training."""
import glob
import math

import pytest
import torch
from torch import nn
from vssm_testing import (REPO, count_params, has_mm_stack, official_state_dict, read_key_dump,
                          run_smoke_training, run_tool, smoke_config)

from vssm_mm.checkpoint import safe_load
from vssm_mm.checkpoint.convert import (ArchSpec, check_keys, convert_checkpoint,
                                        convert_state_dict, register_arch)
from vssm_mm.models.backbones import EfficientVMamba

ARCHS = ('tiny', 'small', 'base')
PARAMS = {'tiny': 6_493_660, 'small': 11_273_688, 'base': 33_717_136}
BACKBONE_PARAMS = {'tiny': 6_109_332, 'small': 10_761_584, 'base': 32_949_480}
# state_dict entries of the official classifier (BatchNorm buffers included).
STATE_DICT_ENTRIES = {'tiny': 261, 'small': 261, 'base': 371}
CONVERTER_ARCH = {'tiny': 'efficientvmamba-t', 'small': 'efficientvmamba-s',
                  'base': 'efficientvmamba-b'}
# Whole dense models as configured (paper: Mask R-CNN S 31M / B 53M, RetinaNet B 44M, UperNet
# T 14M / S 29M / B 65M; its Mask R-CNN T 11M and RetinaNet T 13M / S 19M fit no FPN detector).
DENSE_PARAMS = {
    'tiny_coco.py': 26_198_916, 'small_coco.py': 30_912_608, 'base_coco.py': 53_223_384,
    'tiny_retinanet_coco.py': 15_990_568, 'small_retinanet_coco.py': 20_995_044,
    'base_retinanet_coco.py': 43_887_388,
    'tiny_ade20k.py': 14_487_488, 'small_ade20k.py': 28_783_516, 'base_ade20k.py': 65_370_644,
}
FIXTURES = REPO / 'tests' / 'fixtures'
CLASSIFIER_KEYS = {'classifier.norm.': 'backbone.outnorm3.', 'classifier.head.': 'head.fc.'}
FIXTURE_ARCH = dict(dims=(16, 32, 64, 128), depths=(1, 2, 2, 1))


def _count(module):
    return count_params(module)


def _read_dump(name):
    """(classifier state dict shapes, extra keys of the official detection backbone)."""
    dump = read_key_dump(f'efficientvmamba_keys_{name}')
    sections = dump.pop('__sections__', [dump, {}])
    return sections[0], sections[1]


def _stage_sizes(height, width):
    """Output sizes: 4x4 patchify (floor), then ceil-halving patch merging."""
    h, w = height // 4, width // 4
    sizes = []
    for _ in range(4):
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return sizes


# Large models are built on the meta device: shapes and counts are exact, nothing is allocated
# (allocating and freeing hundreds of MB slows every later test of the process down).
META = torch.device('meta')


@pytest.mark.parametrize('arch', ARCHS)
def test_parameter_counts(arch):
    with META:
        backbone = EfficientVMamba(arch, out_indices=(0, 1, 2, 3))
        classifier_backbone = EfficientVMamba(arch)
    assert _count(backbone) == BACKBONE_PARAMS[arch]
    # Classifier = backbone with only the last output norm + Linear(width, 1000).
    width = backbone.dims[-1]
    assert _count(classifier_backbone) + width * 1000 + 1000 == PARAMS[arch]


@pytest.mark.parametrize('arch', ARCHS)
def test_official_keys_convert_and_match_shapes(arch):
    """Every entry of the official classifier (and of its detection backbone) fits ours."""
    classifier, backbone_extra = _read_dump(arch)
    assert len(classifier) == STATE_DICT_ENTRIES[arch]
    official = {k: torch.empty(s, device=META) for k, s in classifier.items()}
    assert sum(v.numel() for k, v in official.items()
               if 'running' not in k and 'num_batches' not in k) == PARAMS[arch]
    # As released: one EMA state dict of a DDP model.
    released = {'module.module.' + k: v for k, v in official.items()}
    spec = ArchSpec('EfficientVMamba', arch, CLASSIFIER_KEYS)
    converted, dense = convert_state_dict(released, spec)
    assert not dense
    with META:
        ours = {f'backbone.{k}': tuple(v.shape)
                for k, v in EfficientVMamba(arch).state_dict().items()}
    width = EfficientVMamba.arch_zoo[arch]['dims'][-1]
    ours.update({'head.fc.weight': (1000, width), 'head.fc.bias': (1000, )})
    assert check_keys(converted, ours, dense=False) == []

    detection = {'backbone.' + k: torch.empty(s, device=META) for k, s in classifier.items()
                 if not k.startswith('classifier.')}
    detection.update({'backbone.' + k: torch.empty(s, device=META)
                      for k, s in backbone_extra.items()})
    detection['neck.fpn_convs.0.conv.weight'] = torch.empty(256, 256, 3, 3, device=META)
    converted, dense = convert_state_dict(detection, spec)
    assert dense and 'neck.fpn_convs.0.conv.weight' in converted
    with META:
        ours = {f'backbone.{k}': tuple(v.shape)
                for k, v in EfficientVMamba(arch, out_indices=(0, 1, 2, 3)).state_dict().items()}
    assert check_keys(converted, ours, dense=True) == []


def _register_fixture_arch():
    register_arch('test-efficientvmamba', ArchSpec('EfficientVMamba', FIXTURE_ARCH,
                                                   CLASSIFIER_KEYS))
    return 'test-efficientvmamba'


def _load_backbone(state, out_indices):
    model = EfficientVMamba(FIXTURE_ARCH, out_indices=out_indices).eval()
    result = model.load_state_dict(
        {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')},
        strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


def test_logits_equal_official():
    """The official code's logits (recorded in the fixture) are reproduced after conversion.

    The fixture holds a small randomly initialised official ``EfficientVSSM`` (BatchNorm
    statistics included) saved like the released files (``state_dict`` with the
    ``module.module.`` prefix), an odd non-square batch whose ES2D maps are 17 x 22 and 9 x 11
    (padded sub-grids), and the official logits
    (tests/fixtures/make_efficientvmamba_official_fixtures.py).
    """
    path = FIXTURES / 'efficientvmamba_official.pth'
    converted = convert_checkpoint(str(path), _register_fixture_arch())
    assert converted['meta']['task'] == 'classification'
    assert converted['meta']['num_classes'] == 10
    fixture = safe_load(path)
    state = converted['state_dict']
    model = _load_backbone(state, (3, ))
    with torch.no_grad():
        logits = model(fixture['images'])[0].mean((2, 3)) @ state['head.fc.weight'].T + \
            state['head.fc.bias']
    torch.testing.assert_close(logits, fixture['logits'], rtol=0, atol=1e-4)


def test_dense_features_equal_official(tmp_path):
    """An official mmdet checkpoint of ``MM_EfficientVSSM`` converts, loads strictly and gives
    the official backbone's four normalised feature maps."""
    fixture = safe_load(FIXTURES / 'efficientvmamba_official.pth')
    path = tmp_path / 'official_det.pth'
    torch.save(fixture['dense'], path)
    converted = convert_checkpoint(str(path), _register_fixture_arch())
    assert converted['meta']['task'] == 'dense'
    assert 'neck.lateral_convs.0.conv.weight' in converted['state_dict']
    model = _load_backbone(converted['state_dict'], (0, 1, 2, 3))
    with torch.no_grad():
        outs = model(fixture['images'])
    assert len(outs) == len(fixture['features']) == 4
    for ours, theirs in zip(outs, fixture['features']):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize('size', [(64, 64), (97, 75), (33, 130)])
def test_any_input_size(size):
    model = EfficientVMamba('tiny', out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [o.shape[1] for o in outs] == list(model.dims)
    for out, expected in zip(outs, _stage_sizes(*size)):
        assert tuple(out.shape[2:]) == expected and torch.isfinite(out).all()
        assert out.is_contiguous()


def test_out_indices_subset_stops_early():
    model = EfficientVMamba('tiny', out_indices=(1, -3)).eval()
    assert model.out_indices == (1, )
    assert list(model.out_norms) == ['1']
    with torch.no_grad():
        (out, ) = model(torch.randn(1, 3, 64, 48))
    assert out.shape == (1, 96, 8, 6)


def test_gradients_flow_on_non_square_input():
    torch.manual_seed(0)
    # No stochastic depth: a dropped branch would rightly get no gradient.
    model = EfficientVMamba('tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    model.init_weights()
    outs = model(torch.randn(2, 3, 45, 70))
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def _batch_norms(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_norm_eval_keeps_batchnorm_statistics():
    """The conv branches and inverted residuals have BatchNorm: norm_eval freezes its statistics."""
    x = torch.randn(2, 3, 64, 64)
    model = EfficientVMamba('tiny', out_indices=(0, 1, 2, 3), norm_eval=True)
    norms = _batch_norms(model)
    assert len(norms) == 2 * 2 + 3 * (4 + 2)  # conv branches of 4 EVSS + 3 per InRes block
    model.train()
    assert model.training and all(not m.training for m in norms)
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    model(x)
    for m, (mean, var) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    # Without norm_eval, training updates every one of them.
    model = EfficientVMamba('tiny', out_indices=(0, 1, 2, 3)).train()
    norms = _batch_norms(model)
    before = [m.running_mean.clone() for m in norms]
    model(x)
    assert all(not torch.equal(m.running_mean, mean) for m, mean in zip(norms, before))


def test_frozen_stages():
    model = EfficientVMamba('tiny', out_indices=(0, 1, 2, 3), frozen_stages=3)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.stages[2],
              model.out_norms['0'], model.out_norms['1'], model.out_norms['2']]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    # The frozen inverted-residual stage keeps its BatchNorm statistics too.
    stats = [m.running_mean.clone() for m in _batch_norms(model.stages[2])]
    assert model.stages[3].training and all(p.requires_grad for p in model.stages[3].parameters())
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(o.mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(('stages.3.', 'out_norms.3.')) for n in changed)
    assert all(torch.equal(m.running_mean, s)
               for m, s in zip(_batch_norms(model.stages[2]), stats))
    with pytest.raises(ValueError, match='frozen_stages'):
        EfficientVMamba('tiny', frozen_stages=5)


def test_with_cp_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = EfficientVMamba('tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    ckpt = EfficientVMamba('tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 40, 48)
    outs = []
    for model in (plain, ckpt):
        out = model(x)
        sum(o.sum() for o in out).backward()
        outs.append(out)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name, rtol=1e-4, atol=1e-5)


def test_drop_path_schedule_spans_all_blocks():
    with META:
        model = EfficientVMamba('base')
    rates = [m.drop_path.drop_prob for stage in model.stages for m in stage.modules()
             if hasattr(m, 'drop_path')]
    assert len(rates) == 15
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 15))


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="choose one of .*'tiny'"):
        EfficientVMamba('huge')
    with pytest.raises(ValueError, match='misses'):
        EfficientVMamba(dict(dims=(8, 16, 32, 64)))
    with pytest.raises(ValueError, match='same length'):
        EfficientVMamba(dict(dims=(8, 16, 32), depths=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match='evss_stages'):
        EfficientVMamba(dict(dims=(8, 16), depths=(1, 1), evss_stages=3))
    with pytest.raises(ValueError, match='out_indices'):
        EfficientVMamba('tiny', out_indices=(4, ))
    with pytest.raises(ValueError, match='too small'):
        EfficientVMamba('tiny')(torch.randn(1, 3, 8, 8))


def _official_classifier_checkpoint(tmp_path, arch):
    """Our random model written back in the released format (round-trip source)."""
    torch.manual_seed(1)
    model = EfficientVMamba(arch)
    model.init_weights()
    width = model.dims[-1]
    ours = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    ours['head.fc.weight'] = torch.randn(1000, width) * 0.02
    ours['head.fc.bias'] = torch.randn(1000) * 0.02
    spec = ArchSpec('EfficientVMamba', arch, CLASSIFIER_KEYS)
    official = official_state_dict(spec, f'efficientvmamba_keys_{arch}', ours)
    path = tmp_path / f'efficient_vmamba_{arch}.ckpt'
    torch.save({'state_dict': {'module.module.' + k: v for k, v in official.items()}}, path)
    return path, model, official


def test_converter_cli_round_trip_into_classifier_config(tmp_path):
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    src, model, official = _official_classifier_checkpoint(tmp_path, 'tiny')
    dst = tmp_path / 'converted.pth'
    result = run_tool(['tools/convert_checkpoint.py', '--arch', 'efficientvmamba-t', str(src),
                       str(dst)])
    assert f'{len(official)} tensors' in result.stdout
    # The small checkpoint is 64 wide: the wrong width is reported key by key.
    wrong = run_tool(['tools/convert_checkpoint.py', '--arch', 'efficientvmamba-s', str(src),
                      str(tmp_path / 'x.pth')], check=False)
    assert wrong.returncode != 0 and 'shape mismatches' in wrong.stderr

    cfg = Config.fromfile(str(REPO / 'configs/efficientvmamba/tiny_in1k.py'))
    init_default_scope('mmpretrain')
    classifier = MODELS.build(cfg.model).eval()
    load_checkpoint(classifier, str(dst), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected = model.eval()(x)[0].mean((2, 3)) @ official['classifier.head.weight'].T + \
            official['classifier.head.bias']
        logits = classifier(x, mode='tensor')
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('config', ['tiny_coco.py', 'tiny_retinanet_coco.py', 'tiny_ade20k.py'])
def test_pretrained_init_into_dense_backbones(tmp_path, config):
    from mmengine.config import Config

    from vssm_mm.registry import MODELS
    src, model, _ = _official_classifier_checkpoint(tmp_path, 'tiny')
    dst = tmp_path / 'efficientvmamba_tiny_in1k.pth'
    torch.save(convert_checkpoint(str(src), 'efficientvmamba-t'), dst)
    cfg = Config.fromfile(str(REPO / 'configs' / 'efficientvmamba' / config)).model.backbone
    cfg.init_cfg.checkpoint = str(dst)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    ours = backbone.state_dict()
    for key, value in model.state_dict().items():
        if key in ours:  # the retinanet backbone has no out_norms.0
            torch.testing.assert_close(ours[key], value, msg=key)
    assert 'out_norms.3.weight' in ours and 'stages.2.downsample.reduction.weight' in ours


CONFIGS = sorted(glob.glob(str(REPO / 'configs' / 'efficientvmamba' / '*.py')))


def test_config_list_is_complete():
    names = {p.rsplit('/', 1)[1] for p in CONFIGS}
    expected = {f'{a}_{task}.py' for a in ARCHS
                for task in ('in1k', 'coco', 'coco_3x', 'retinanet_coco', 'ade20k')}
    assert expected <= names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.rsplit('/', 1)[1])
def test_config_builds(path):
    library = 'mmpretrain' if path.endswith('_in1k.py') else \
        'mmdet' if '_coco' in path else 'mmseg'
    if not has_mm_stack(library):
        pytest.skip(f'{library} is not installed')
    import importlib

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    name = path.rsplit('/', 1)[1]
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    init_default_scope(library)
    with META:
        model = importlib.import_module(f'{library}.registry').MODELS.build(cfg.model)
    backbone = model.backbone
    assert isinstance(backbone, EfficientVMamba)
    assert backbone.arch_name == name.split('_')[0]
    if library == 'mmpretrain':
        assert _count(model) == PARAMS[backbone.arch_name]
        assert backbone.out_indices == (3, )
        assert math.isclose(cfg.model.backbone.drop_path_rate, 0.1)
        return
    if 'retinanet' in name:
        assert backbone.out_indices == (1, 2, 3)
        assert list(cfg.model.neck.in_channels) == list(backbone.dims[1:])
    else:
        assert backbone.out_indices == (0, 1, 2, 3)
        widths = cfg.model.neck.in_channels if library == 'mmdet' else \
            cfg.model.decode_head.in_channels
        assert list(widths) == list(backbone.dims)
    if library == 'mmseg':
        assert cfg.model.auxiliary_head.in_channels == backbone.dims[2]
    assert math.isclose(cfg.model.backbone.drop_path_rate, 0.3 if library == 'mmseg' else 0.2)
    if not name.endswith('_3x.py'):
        assert _count(model) == DENSE_PARAMS[name]


def test_in1k_recipe_is_the_logged_one():
    """The logged recipe: lr 2e-3, wd 0.04 (also on A_logs / dt_projs_bias, not on 1-D tensors),
    per-epoch warm-up from 1e-7, cosine to 1e-6, Mixup 0.2 / CutMix 1.0, clip 1.0, and timm's
    non-increasing RandAugment."""
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(REPO / 'configs/efficientvmamba/tiny_in1k.py'))
    base = Config.fromfile(str(REPO / 'configs/efficientvmamba/base_in1k.py'))
    assert (cfg.train_dataloader.batch_size, base.train_dataloader.batch_size) == (128, 64)
    assert (cfg.auto_scale_lr.base_batch_size, base.auto_scale_lr.base_batch_size) == (2048, 1024)
    assert [a.alpha for a in cfg.model.train_cfg.augments] == [0.2, 1.0]
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0
    warmup, cosine = cfg.param_scheduler
    assert math.isclose(2e-3 * warmup.start_factor, 1e-7) and warmup.end == 20
    assert not warmup.get('convert_to_iter_based', False)  # stepped once per epoch
    assert cosine.eta_min == 1e-6 and cosine.convert_to_iter_based
    randaug = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandAugment')
    policies = {p['type']: p for p in randaug.policies}
    assert policies['ColorTransform']['random_negative_prob'] == 0.0
    assert policies['Solarize']['magnitude_range'] == (0, 256)

    init_default_scope('mmpretrain')
    model = EfficientVMamba('tiny')
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        assert group['lr'] == 2e-3
        for param in group['params']:
            decay[names[id(param)]] = group['weight_decay']
    block = 'stages.0.blocks.0.'
    ssm = block + 'mixer.ssm.'
    assert decay[ssm + 'A_log'] == decay[ssm + 'dt_proj_bias'] == 0.04
    assert decay[ssm + 'x_proj_weight'] == decay[block + 'mixer.in_proj.weight'] == 0.04
    assert decay[ssm + 'D'] == decay[block + 'norm.weight'] == 0.0
    assert decay[block + 'channel_attn.reduce.bias'] == \
        decay['stages.2.blocks.0.expand.1.weight'] == 0.0


def _retinanet_smoke_config(path, demo_data, tmp_path):
    """smoke_config for a detector without roi_head (RetinaNet): box metric only."""
    stub = tmp_path / 'retinanet_smoke.py'
    stub.write_text(f"_base_ = ['{path}']\n"
                    'model = dict(roi_head=dict(bbox_head=dict(), mask_head=dict()))\n')
    cfg = smoke_config(stub, 'det', demo_data, tmp_path, iters=1, validate=True)
    cfg.model.bbox_head.num_classes = cfg.model.pop('roi_head').bbox_head.num_classes
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key] = dict(cfg[key], metric='bbox')
    return cfg


@pytest.mark.parametrize('task,config', [('cls', 'tiny_in1k.py'), ('det', 'tiny_coco.py'),
                                         ('det', 'tiny_retinanet_coco.py'),
                                         ('seg', 'tiny_ade20k.py')])
def test_one_training_iteration(task, config, demo_data, tmp_path):
    library = {'cls': 'mmpretrain', 'det': 'mmdet', 'seg': 'mmseg'}[task]
    if not has_mm_stack(library):
        pytest.skip(f'{library} is not installed')
    path = REPO / 'configs' / 'efficientvmamba' / config
    if 'retinanet' in config:
        cfg = _retinanet_smoke_config(path, demo_data, tmp_path)
    else:
        cfg = smoke_config(path, task, demo_data, tmp_path, iters=1, validate=True)
    runner = run_smoke_training(cfg)
    assert (tmp_path / 'iter_1.pth').is_file()
    scalars = runner.message_hub.log_scalars
    assert math.isfinite(scalars['train/loss'].current())


@pytest.mark.parametrize('size', [(64, 64), (45, 70)])
def test_cpu_inference_path_equals_the_standard_path(size, monkeypatch):
    """The float32 CPU inference paths (the fused conv, SiLU and split into sub-grids, and the
    channels-first norm and gate in the mixers, compiled where built; the combine of the EVSS
    blocks; the channel attention's summary; BatchNorms folded into their convolutions) give
    the standard path's outputs; gradients take the standard path."""
    from vssm_mm.models.backbones import efficientvmamba
    from vssm_mm.models.layers import batchnorm_folding
    from vssm_mm.ops import conv_scan, norm_gate
    torch.manual_seed(0)
    model = EfficientVMamba(dict(dims=(16, 32, 48, 64), depths=(2, 2, 1, 1)),
                            out_indices=(0, 1, 2, 3))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        model(x)  # training mode: the BatchNorms' running statistics move away from (0, 1)
    model.eval()
    calls = []
    for module, name in ((norm_gate, 'norm_gate_channels'), (conv_scan, 'dwconv_silu_scan')):
        ext = module._extension()
        if ext is None:
            continue

        class Spy:  # counts the mixers' calls of the compiled pass
            def __init__(self, ext=ext, name=name):
                self.ext, self.name = ext, name

            def __getattr__(self, attr):
                compiled = getattr(self.ext, attr)
                if attr != self.name:
                    return compiled
                return lambda *args: calls.append(attr) or compiled(*args)

        spy = Spy()
        monkeypatch.setattr(module, '_extension', lambda spy=spy: spy)
    with torch.no_grad():
        fast = model(x)
    built = norm_gate._extension() is not None
    assert sorted(calls) == (['dwconv_silu_scan'] * 4 + ['norm_gate_channels'] * 4
                             if built else [])
    with monkeypatch.context() as patch:
        patch.setattr(norm_gate, 'compiled_inference', lambda *tensors: False)
        patch.setattr(conv_scan, 'compiled_inference', lambda *tensors: False)
        patch.setattr(efficientvmamba, 'cpu_inference', lambda *tensors: False)
        patch.setattr(batchnorm_folding, 'cpu_inference', lambda *tensors: False)
        with torch.no_grad():
            standard = model(x)
    for a, b in zip(fast, standard):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    calls.clear()
    outs = EfficientVMamba(dict(dims=(16, 32, 48, 64), depths=(1, 1, 1, 1)))(x)
    outs[0].sum().backward()
    assert calls == []


def test_inverted_residual_inference_works_in_place_with_the_same_values(monkeypatch):
    """In inference the inverted residual's activations, channel attention and residual run in
    place on the maps it made (not on its input); its output equals the standard path's."""
    from vssm_mm.models.backbones import efficientvmamba
    from vssm_mm.models.backbones.efficientvmamba import InvertedResidual
    torch.manual_seed(0)
    block = InvertedResidual(16, expand_ratio=4, se_ratio=0.25)
    x = torch.randn(2, 7, 9, 16)
    with torch.no_grad():
        block(x)  # training mode: the BatchNorms' running statistics move away from (0, 1)
    block.eval()
    x_before = x.clone()
    with torch.no_grad():
        fast = block(x)
    assert torch.equal(x, x_before)  # the input is not touched
    monkeypatch.setattr(efficientvmamba, 'cpu_inference', lambda *tensors: False)
    with torch.no_grad():
        standard = block(x)
    torch.testing.assert_close(fast, standard, rtol=1e-5, atol=1e-6)
    # With gradients: the standard path, and they flow.
    block(x.requires_grad_(True)).sum().backward()
    assert x.grad is not None and block.expand[0].weight.grad is not None


def test_squeeze_excite_in_place_scales_its_input():
    from vssm_mm.models.layers import SqueezeExcite
    torch.manual_seed(0)
    se, x = SqueezeExcite(12, 3), torch.randn(2, 12, 5, 5)
    with torch.no_grad():
        expected = se(x)
        y = x.clone()
        out = se(y, inplace=True)
    assert out.data_ptr() == y.data_ptr()
    torch.testing.assert_close(out, expected)
