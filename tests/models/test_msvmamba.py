"""MSVMamba: exact sizes, official outputs, checkpoint conversion, configs, training smoke."""
import glob
import math

import pytest
import torch
from vssm_testing import (REPO, count_params, has_mm_stack, official_state_dict, read_key_dump,
                          run_smoke_training, run_tool, smoke_config)

from vssm_mm.checkpoint import safe_load
from vssm_mm.checkpoint.convert import (ARCHS, ArchSpec, check_keys, convert_checkpoint,
                                        convert_state_dict, register_arch)
from vssm_mm.models.backbones import MSVMamba

PARAMS = {'nano': 6_864_136, 'micro': 11_879_272, 'tiny': 33_046_312,
          'v2_tiny': 32_263_720, 'v2_small': 50_216_296, 'v2_base': 90_591_976}
BACKBONE_PARAMS = {'nano': 6_479_808, 'micro': 11_367_168, 'tiny': 32_278_656,
                   'v2_tiny': 31_496_064, 'v2_small': 49_448_640, 'v2_base': 89_568_768}
CONVERTER_ARCH = {'nano': 'msvmamba-n', 'micro': 'msvmamba-m', 'tiny': 'msvmamba-t',
                  'v2_tiny': 'msvmamba2-t', 'v2_small': 'msvmamba2-s', 'v2_base': 'msvmamba2-b'}
KEY_DUMPS = {'nano': 'nano', 'micro': 'micro', 'tiny': 'tiny', 'v2_tiny': 'v2_tiny',
             'v2_small': 'v2_small', 'v2_base': 'v2_base'}
FIXTURES = REPO / 'tests' / 'fixtures'
CLASSIFIER_KEYS = {'classifier.norm.': 'backbone.outnorm3.', 'classifier.head.': 'head.fc.'}


def _count(module):
    return count_params(module)


def _read_dump(name):
    return read_key_dump(f'msvmamba_keys_{name}')


@pytest.mark.parametrize('arch', list(PARAMS))
def test_backbone_parameter_counts(arch):
    backbone = MSVMamba(arch, out_indices=(0, 1, 2, 3))
    assert _count(backbone) == BACKBONE_PARAMS[arch]
    width = backbone.dims[-1]
    # Classifier = backbone with only the last output norm + Linear(width, 1000).
    classifier = _count(MSVMamba(arch)) + width * 1000 + 1000
    assert classifier == PARAMS[arch]


@pytest.mark.parametrize('arch', list(PARAMS))
def test_official_keys_convert_and_match_shapes(arch):
    """Every key of the official classifier maps onto our model with the same shape."""
    official = {k: torch.empty(s) for k, s in _read_dump(KEY_DUMPS[arch]).items()}
    assert sum(v.numel() for v in official.values()) == PARAMS[arch]
    converted, dense = convert_state_dict(official, ArchSpec('MSVMamba', arch, CLASSIFIER_KEYS))
    assert not dense
    ours = {f'backbone.{k}': tuple(v.shape) for k, v in MSVMamba(arch).state_dict().items()}
    ours.update({'head.fc.weight': (1000, MSVMamba.arch_zoo[arch]['dims'][-1]),
                 'head.fc.bias': (1000, )})
    assert check_keys(converted, ours, dense=False) == []


def test_official_detection_backbone_keys():
    official = {'backbone.' + k: torch.empty(s)
                for k, s in _read_dump('micro_backbone').items()}
    official['neck.lateral_convs.0.conv.weight'] = torch.empty(256, 64, 1, 1)
    converted, dense = convert_state_dict(official, ArchSpec('MSVMamba', 'micro', CLASSIFIER_KEYS))
    assert dense and 'neck.lateral_convs.0.conv.weight' in converted
    ours = {f'backbone.{k}': tuple(v.shape)
            for k, v in MSVMamba('micro', out_indices=(0, 1, 2, 3)).state_dict().items()}
    assert check_keys(converted, ours, dense=True) == []


def _fixture_arch(generation, gate):
    base = MSVMamba.arch_zoo['tiny' if generation == 'v1' else 'v2_tiny']
    return dict(base, dims=(16, 32, 64, 128), depths=(1, 2, 2, 1), gate=gate)


@pytest.mark.parametrize('name,generation,gate', [('v1', 'v1', True), ('v2', 'v2', False),
                                                  ('v2_gate', 'v2', True)])
@pytest.mark.parametrize('weights', ['raw', 'ema'])
def test_logits_equal_official(name, generation, gate, weights):
    """The official code's logits (recorded in the fixture) are reproduced after conversion.

    The fixture holds a small randomly initialised official model saved in the official
    trainer's format (model, model_ema, a yacs config), an odd non-square input batch and the
    logits the official code computed (tests/fixtures/make_msvmamba_official_fixtures.py).
    """
    path = FIXTURES / f'msvmamba_official_{name}.pth'
    arch_name = f'test-msvmamba-{name}'
    register_arch(arch_name, ArchSpec('MSVMamba', _fixture_arch(generation, gate),
                                      CLASSIFIER_KEYS))
    converted = convert_checkpoint(str(path), arch_name, weights=weights)
    assert converted['meta']['weights'] == weights
    fixture = safe_load(path)
    model = MSVMamba(_fixture_arch(generation, gate)).eval()
    state = converted['state_dict']
    missing = model.load_state_dict(
        {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')},
        strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    with torch.no_grad():
        logits = model(fixture['images'])[0].mean((2, 3)) @ state['head.fc.weight'].T + \
            state['head.fc.bias']
    if weights == 'raw':
        torch.testing.assert_close(logits, fixture['logits'], rtol=0, atol=1e-4)
    else:  # the EMA copy is a different model: a converter mixing them up would pass 'raw'
        assert (logits - fixture['logits']).abs().max() > 1e-3


@pytest.mark.parametrize('arch', ['nano', 'v2_tiny'])
@pytest.mark.parametrize('size', [(64, 64), (97, 75), (33, 130)])
def test_any_input_size(arch, size):
    model = MSVMamba(arch, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [o.shape[1] for o in outs] == list(model.dims)
    height, width = size
    if arch == 'nano':  # 4x4 patchify (floor), then ceil-halving patch merging
        h, w = height // 4, width // 4
    else:  # two stride-2 convs
        h, w = (height + 1) // 2, (width + 1) // 2
        h, w = (h + 1) // 2, (w + 1) // 2
    for out in outs:
        assert tuple(out.shape[2:]) == (h, w) and torch.isfinite(out).all()
        h, w = (h + 1) // 2, (w + 1) // 2


def test_gradients_flow_on_non_square_input():
    torch.manual_seed(0)
    # No stochastic depth: a dropped branch would rightly get no gradient.
    model = MSVMamba('nano', out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    model.init_weights()
    outs = model(torch.randn(2, 3, 45, 70))
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_frozen_stages_and_norm_eval():
    model = MSVMamba('nano', out_indices=(0, 1, 2, 3), frozen_stages=2, norm_eval=True)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.out_norms['0'],
              model.out_norms['1']]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert model.stages[2].training and all(p.requires_grad for p in model.stages[2].parameters())
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(o.mean() for o in model(torch.randn(1, 3, 64, 64))).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not any(n.startswith(('stem', 'stages.0.', 'stages.1.',
                                             'out_norms.0.', 'out_norms.1.')) for n in changed)
    with pytest.raises(ValueError, match='frozen_stages'):
        MSVMamba('nano', frozen_stages=5)


def test_with_cp_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = MSVMamba('nano', out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    ckpt = MSVMamba('nano', out_indices=(0, 1, 2, 3), drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 40, 48)
    for model in (plain, ckpt):
        sum(o.sum() for o in model(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name, rtol=1e-4, atol=1e-5)


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="choose one of .*'nano'"):
        MSVMamba('huge')
    with pytest.raises(ValueError, match='misses'):
        MSVMamba(dict(generation='v1', dims=(8, 16, 32, 64)))
    with pytest.raises(ValueError, match='out_indices'):
        MSVMamba('nano', out_indices=(4, ))
    with pytest.raises(ValueError, match='too small'):
        MSVMamba('nano')(torch.randn(1, 3, 8, 8))


def _official_classifier_checkpoint(tmp_path, arch):
    """Our random model written back in the official trainer format (round-trip source)."""
    torch.manual_seed(1)
    model = MSVMamba(arch)
    model.init_weights()
    width = model.dims[-1]
    ours = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    ours['head.fc.weight'] = torch.randn(1000, width) * 0.02
    ours['head.fc.bias'] = torch.randn(1000) * 0.02
    official = official_state_dict(ARCHS[CONVERTER_ARCH[arch]], f'msvmamba_keys_{arch}', ours)
    path = tmp_path / f'official_{arch}.pth'
    torch.save({'model': official, 'epoch': 299, 'max_accuracy': 1.0}, path)
    return path, model, official


def test_converter_cli_round_trip_into_classifier_config(tmp_path):
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    src, model, official = _official_classifier_checkpoint(tmp_path, 'nano')
    dst = tmp_path / 'converted.pth'
    result = run_tool(['tools/convert_checkpoint.py', '--arch', 'msvmamba-n', str(src), str(dst)])
    assert 'raw weights' in result.stdout
    # Never overwrite what a user made.
    again = run_tool(['tools/convert_checkpoint.py', '--arch', 'msvmamba-n', str(src), str(dst)],
                     check=False)
    assert again.returncode != 0 and 'exists' in again.stderr
    # A wrong architecture is reported key by key.
    wrong = run_tool(['tools/convert_checkpoint.py', '--arch', 'msvmamba-m', str(src),
                      str(tmp_path / 'x.pth')], check=False)
    assert wrong.returncode != 0 and 'shape mismatches' in wrong.stderr

    cfg = Config.fromfile(str(REPO / 'configs/msvmamba/nano_in1k.py'))
    init_default_scope('mmpretrain')
    classifier = MODELS.build(cfg.model).eval()
    load_checkpoint(classifier, str(dst), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected = model.eval()(x)[0].mean((2, 3)) @ official['classifier.head.weight'].T + \
            official['classifier.head.bias']
        logits = classifier(x, mode='tensor')
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('config', ['micro_coco.py', 'micro_ade20k.py'])
def test_pretrained_init_into_dense_backbones(tmp_path, config):
    from mmengine.config import Config

    from vssm_mm.registry import MODELS
    src, model, _ = _official_classifier_checkpoint(tmp_path, 'micro')
    dst = tmp_path / 'micro_in1k.pth'
    torch.save(convert_checkpoint(str(src), 'msvmamba-m'), dst)
    cfg = Config.fromfile(str(REPO / 'configs' / 'msvmamba' / config)).model.backbone
    cfg.init_cfg.checkpoint = str(dst)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    ours = backbone.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ours[key], value, msg=key)


CONFIGS = sorted(glob.glob(str(REPO / 'configs' / 'msvmamba' / '*.py')))


def test_config_list_is_complete():
    names = {p.rsplit('/', 1)[1] for p in CONFIGS}
    expected = {f'{a}_in1k.py' for a in PARAMS} | {
        'micro_coco.py', 'tiny_coco.py', 'micro_coco_3x.py', 'tiny_coco_3x.py',
        'nano_ade20k.py', 'micro_ade20k.py', 'tiny_ade20k.py'}
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
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    init_default_scope(library)
    model = importlib.import_module(f'{library}.registry').MODELS.build(cfg.model)
    backbone = model.backbone
    assert isinstance(backbone, MSVMamba)
    if library == 'mmpretrain':
        assert _count(model) == PARAMS[backbone.arch_name]
        assert backbone.out_indices == (3, )
    else:
        assert backbone.out_indices == (0, 1, 2, 3)
        widths = cfg.model.neck.in_channels if library == 'mmdet' else \
            cfg.model.decode_head.in_channels
        assert list(widths) == list(backbone.dims)
        assert math.isclose(cfg.model.backbone.drop_path_rate,
                            0.3 if ('nano_ade' in path or 'micro_ade' in path) else 0.2)


@pytest.mark.parametrize('task,config', [('cls', 'nano_in1k.py'), ('det', 'micro_coco.py'),
                                         ('seg', 'nano_ade20k.py')])
def test_one_training_iteration(task, config, demo_data, tmp_path):
    library = {'cls': 'mmpretrain', 'det': 'mmdet', 'seg': 'mmseg'}[task]
    if not has_mm_stack(library):
        pytest.skip(f'{library} is not installed')
    cfg = smoke_config(REPO / 'configs' / 'msvmamba' / config, task, demo_data, tmp_path,
                       iters=1, validate=True)
    runner = run_smoke_training(cfg)
    assert (tmp_path / 'iter_1.pth').is_file()
    scalars = runner.message_hub.log_scalars
    assert math.isfinite(scalars['train/loss'].current())


def test_cpu_inference_norm_equals_the_standard_path(monkeypatch):
    """v1's out_norm over channels-first sequences: the compiled kernel (no_grad, float32 CPU)
    gives torch's values."""
    from vssm_mm.ops import norm_gate
    torch.manual_seed(0)
    model = MSVMamba(_fixture_arch('v1', True), out_indices=(0, 1, 2, 3)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    x = torch.randn(2, 3, 61, 45)
    calls = []
    kernel = norm_gate._extension
    monkeypatch.setattr(norm_gate, '_extension', lambda: calls.append(1) or kernel())
    with torch.no_grad():
        fast = model(x)
    assert calls or kernel() is None
    with monkeypatch.context() as patch:
        patch.setattr(norm_gate, 'compiled_inference', lambda *tensors: False)
        with torch.no_grad():
            standard = model(x)
    for a, b in zip(fast, standard):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
