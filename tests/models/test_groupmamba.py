"""GroupMamba: exact sizes, official outputs, checkpoint conversion, configs, training smoke."""
import glob
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vssm_testing import (REPO, count_params, has_mm_stack, official_state_dict, read_key_dump,
                          run_smoke_training, run_tool, smoke_config)

from vssm_mm.checkpoint import safe_load
from vssm_mm.checkpoint.convert import (build_reference_keys, check_keys, convert_checkpoint,
                                        convert_state_dict, register_arch)
from vssm_mm.checkpoint.families.groupmamba import arch_spec
from vssm_mm.models.backbones import GroupMamba
from vssm_mm.models.backbones import groupmamba as groupmamba_module
from vssm_mm.models.classifiers import DistillLinearClsHead

ARCHS = ('tiny', 'small', 'base')
# The official classifier with its distillation head (what the paper counts: 23M / 34M / 57M).
PARAMS = {'tiny': 23_361_917, 'small': 34_781_555, 'base': 57_150_838}
# Stem, downsamples, blocks and norm1..3: what the dense backbones reuse.
BACKBONE_PARAMS = {'tiny': 20_461_328, 'small': 31_142_274, 'base': 53_511_557}
STATE_DICT_ENTRIES = {'tiny': 1266, 'small': 1693, 'base': 2120}
CONVERTER_ARCH = {'tiny': 'groupmamba-t', 'small': 'groupmamba-s', 'base': 'groupmamba-b'}
# Whole dense models as configured (paper, tiny only: Mask R-CNN 40M, UperNet 49M).
DENSE_PARAMS = {
    'tiny_coco.py': 40_621_496, 'small_coco.py': 51_318_954, 'base_coco.py': 73_732_613,
    'tiny_ade20k.py': 50_604_020, 'small_ade20k.py': 61_711_078, 'base_ade20k.py': 84_343_873,
}
FIXTURES = REPO / 'tests' / 'fixtures'
# The arch of the official-output fixture (tests/fixtures/make_groupmamba_official_fixtures.py):
# widths 16..96 (groups of 4 to 24 channels, dt_rank 1 and 2), non-square maps at every stage.
SMALL = dict(stem_hidden_dim=8, embed_dims=(16, 32, 72, 96), depths=(1, 2, 2, 1),
             mlp_ratios=(4, 4, 2, 2))


def _count(module):
    return count_params(module)


def _read_dump(name):
    return read_key_dump(f'groupmamba_keys_{name}')


def _stage_sizes(height, width):
    """Every stride-2 conv maps H -> ceil(H / 2); the stem has two of them."""
    sizes = []
    h, w = height, width
    for i in range(5):
        h, w = (h + 1) // 2, (w + 1) // 2
        if i >= 1:
            sizes.append((h, w))
    return sizes


@pytest.mark.parametrize('arch', ARCHS)
def test_parameter_counts(arch):
    dense = GroupMamba(arch, out_indices=(0, 1, 2, 3))
    outnorms = _count(dense.out_norms)
    assert _count(dense) - outnorms == BACKBONE_PARAMS[arch]
    classifier = GroupMamba(arch, out_type='cls_token')
    width = classifier.dims[-1]
    assert _count(classifier) + 2 * (width * 1000 + 1000) == PARAMS[arch]


@pytest.mark.parametrize('arch', ARCHS)
def test_official_keys_convert_and_match_shapes(arch):
    """Every key of the official classifier maps onto our model with the same shape."""
    official = {k: torch.empty(s) for k, s in _read_dump(arch).items()}
    assert len(official) == STATE_DICT_ENTRIES[arch]
    assert sum(v.numel() for k, v in official.items()
               if 'running_' not in k and 'num_batches' not in k) == PARAMS[arch]
    spec = arch_spec(arch)
    converted, dense = convert_state_dict(official, spec)
    assert not dense
    assert converted['head.dist_head.weight'].shape == official['dist_head.weight'].shape
    reference = build_reference_keys(spec, dense=False, num_classes=1000)
    assert check_keys(converted, reference, dense=False) == []


def test_converter_refuses_dense_checkpoints():
    from vssm_mm.checkpoint.convert import ConversionError
    with pytest.raises(ConversionError, match='no official detection'):
        convert_state_dict({'backbone.norm1.weight': torch.ones(2)}, arch_spec('tiny'))


def _fixture_model():
    """Our backbone + head after converting the official fixture checkpoint."""
    register_arch('test-groupmamba-small', arch_spec(SMALL))
    converted = convert_checkpoint(str(FIXTURES / 'groupmamba_official_weights.pth'),
                                   'test-groupmamba-small')
    assert converted['meta']['weights'] == 'bare' and converted['meta']['num_classes'] == 10
    model = nn.ModuleDict(dict(
        backbone=GroupMamba(SMALL, out_type='cls_token'),
        head=DistillLinearClsHead(10, SMALL['embed_dims'][-1], loss=nn.Identity())))
    result = model.load_state_dict(converted['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def test_logits_equal_official():
    """The official code's logits (recorded in the fixture) are reproduced after conversion.

    The fixture holds a small randomly initialised official classifier saved as the released
    checkpoints are (a bare state dict), an odd non-square input batch and the logits of the
    official code (tests/fixtures/make_groupmamba_official_fixtures.py): the eval-mode mean of
    both heads, and each head alone.
    """
    model = _fixture_model()
    fixture = safe_load(FIXTURES / 'groupmamba_official_io.pth')
    with torch.no_grad():
        feats = model['backbone'](fixture['images'])
        logits = model['head'](feats)
        head, dist = model['head'].forward_heads(feats)
    torch.testing.assert_close(logits, fixture['logits'], rtol=0, atol=1e-4)
    torch.testing.assert_close(head, fixture['logits_head'], rtol=0, atol=1e-4)
    torch.testing.assert_close(dist, fixture['logits_dist'], rtol=0, atol=1e-4)
    assert (head - dist).abs().max() > 0.1  # the two heads differ: averaging is tested


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_matches_the_official_logits_and_trains_under_amp():
    """The GPU path (Triton/CUDA scan and scan orders) gives the official logits, and an fp16
    autocast step gives finite gradients everywhere."""
    model = _fixture_model().cuda()
    fixture = safe_load(FIXTURES / 'groupmamba_official_io.pth')
    images = fixture['images'].cuda()
    with torch.no_grad():
        logits = model['head'](model['backbone'](images))
    torch.testing.assert_close(logits.cpu(), fixture['logits'], rtol=0, atol=1e-3)
    model.train()
    with torch.autocast('cuda', dtype=torch.float16):
        out = model['head'](model['backbone'](images))
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('size', [(64, 64), (97, 75), (33, 130), (5, 3)])
def test_any_input_size(size):
    model = GroupMamba(SMALL, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
        cls_token = GroupMamba(SMALL, out_type='cls_token').eval()(torch.randn(2, 3, *size))
    assert [o.shape[1] for o in outs] == list(SMALL['embed_dims'])
    assert [tuple(o.shape[2:]) for o in outs] == _stage_sizes(*size)
    assert all(torch.isfinite(o).all() for o in outs)
    assert cls_token[0].shape == (2, SMALL['embed_dims'][-1])


def test_out_indices_subset_stops_early():
    model = GroupMamba(SMALL, out_indices=(1, )).eval()
    assert list(model.out_norms) == ['1']
    with torch.no_grad():
        (out, ) = model(torch.randn(1, 3, 40, 56))
    assert out.shape == (1, 32, 5, 7)


def _plain_group_scan(x):
    """(B, 4d, H, W) -> (B, 4, d, L) with plain tensor ops (autograd does the backward)."""
    g1, g2, g3, g4 = x.chunk(4, dim=1)
    rows = g1.flatten(2)
    cols = g2.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, g3.flatten(2).flip(-1),
                        g4.transpose(2, 3).flatten(2).flip(-1)], dim=1)


def _plain_group_merge(y, size):
    """The inverse of :func:`_plain_group_scan`, with plain tensor ops."""
    height, width = size
    batch, _, channels, _ = y.shape
    y1, y2, y3, y4 = y.unbind(1)
    maps = [y1.reshape(batch, channels, height, width),
            y2.reshape(batch, channels, width, height).transpose(2, 3),
            y3.flip(-1).reshape(batch, channels, height, width),
            y4.flip(-1).reshape(batch, channels, width, height).transpose(2, 3)]
    return torch.cat(maps, dim=1)


def test_group_scan_matches_plain_permutations_with_gradients_on_non_square_maps():
    """The official CrossScan_2/4 backward reshapes the gradient as (H, W) instead of (W, H),
    which is wrong for H != W. Ours must equal autograd through plain permutations."""
    from vssm_mm.ops.scan_orders import group_merge, group_scan
    torch.manual_seed(0)
    for size in [(3, 5), (4, 7), (1, 6)]:
        x = torch.randn(2, 12, *size, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(2, 4, 3, size[0] * size[1], dtype=torch.float64)
        ours = group_scan(x)
        plain = _plain_group_scan(x)
        torch.testing.assert_close(ours, plain, rtol=0, atol=0)
        grad_ours, = torch.autograd.grad(ours, x, upstream)
        grad_plain, = torch.autograd.grad(plain, x, upstream)
        torch.testing.assert_close(grad_ours, grad_plain, rtol=0, atol=0)
        y = upstream.clone().requires_grad_(True)
        merged, merged_plain = group_merge(y, size), _plain_group_merge(y, size)
        torch.testing.assert_close(merged, merged_plain, rtol=0, atol=0)
        torch.testing.assert_close(group_merge(group_scan(x), size), x)
        up = torch.randn_like(merged)
        torch.testing.assert_close(torch.autograd.grad(merged, y, up)[0],
                                   torch.autograd.grad(merged_plain, y, up)[0], rtol=0, atol=0)


def test_layer_gradients_equal_plain_permutation_layer_on_non_square_maps(monkeypatch):
    """The whole Modulated Group Mamba layer: outputs and every gradient (input and all
    parameters) on a 5 x 7 map equal those of the same layer with plain permutations."""
    torch.manual_seed(0)
    layer = groupmamba_module.ModulatedGroupMamba(64)
    x = torch.randn(2, 5 * 7, 64, requires_grad=True)

    def run():
        out = layer(x, (5, 7))
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                    [x] + list(layer.parameters()))
        return out, grads

    out, grads = run()
    monkeypatch.setattr(groupmamba_module, 'group_scan', _plain_group_scan)
    monkeypatch.setattr(groupmamba_module, 'group_merge', _plain_group_merge)
    out_plain, grads_plain = run()
    torch.testing.assert_close(out, out_plain, rtol=1e-5, atol=1e-6)
    names = ['input'] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(names, grads, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        assert a.abs().sum() > 0, name


@pytest.mark.parametrize('out_type', ['featmap', 'cls_token'])
def test_gradients_flow_on_non_square_input(out_type):
    kwargs = dict(out_indices=(0, 1, 2, 3)) if out_type == 'featmap' else dict(out_type=out_type)
    torch.manual_seed(0)
    # No stochastic depth: a dropped branch would rightly get no gradient.
    model = GroupMamba(SMALL, drop_path_rate=0.0, **kwargs)
    model.init_weights()
    with torch.no_grad():  # keep the 1-unit channel-affinity ReLU of width 16 from being dead
        for name, param in model.named_parameters():
            if name.endswith('mixer.fc1.bias'):
                param.fill_(1.0)
    outs = model(torch.randn(2, 3, 45, 70))
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    # The class block scans a sequence of length 1 from a zero state: y = C * delta * B * u + D * u
    # does not depend on A (in the official model too), so its A_log never learns.
    expected = ['class_block.mixer.ssm.A_log'] if out_type == 'cls_token' else []
    assert no_grad == expected


def test_init_weights_follows_the_official_init():
    model = GroupMamba(SMALL, out_type='cls_token')
    model.init_weights()
    layer = model.stages[2].blocks[0].mixer
    assert torch.equal(layer.skip_scale, torch.ones(1))
    assert torch.equal(layer.ssm.A_log, torch.zeros(4 * 18, 1))  # A = -1 (d_state = 1)
    assert torch.equal(layer.ssm.D, torch.ones(4 * 18))
    delta = F.softplus(layer.ssm.dt_proj_bias)
    assert delta.min() >= 1e-4 and delta.max() <= 0.1 + 1e-6
    assert abs(layer.proj.weight.std().item() - 0.02) < 0.002 and layer.proj.bias.abs().sum() == 0
    conv = model.stages[0].downsample.proj
    assert abs(conv.weight.std().item() - math.sqrt(2 / (9 * 32))) < 0.03
    assert torch.equal(model.class_norm.weight, torch.ones(96))


def test_frozen_stages_and_norm_eval():
    model = GroupMamba(SMALL, out_indices=(0, 1, 2, 3), frozen_stages=2, norm_eval=True)
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
    frozen_names = ('stem.', 'stages.0.', 'stages.1.', 'out_norms.0.', 'out_norms.1.')
    assert changed and not any(n.startswith(frozen_names) for n in changed)

    # norm_eval alone keeps the stem's BatchNorm statistics.
    model = GroupMamba(SMALL, norm_eval=True).train()
    stats = model.stem.conv[1].running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.stem.conv[1].running_mean, stats)
    assert model.stages[0].training
    with pytest.raises(ValueError, match='frozen_stages'):
        GroupMamba(SMALL, frozen_stages=5)


def test_with_cp_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = GroupMamba(SMALL, out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    ckpt = GroupMamba(SMALL, out_indices=(0, 1, 2, 3), drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 40, 48)
    for model in (plain, ckpt):
        sum(o.sum() for o in model(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name, rtol=1e-4, atol=1e-5)


def test_drop_path_schedule():
    model = GroupMamba('tiny', out_type='cls_token')
    rates = [block.drop_path.drop_prob
             for stage in model.stages for block in stage.blocks]
    assert len(rates) == 19 and rates[0] == 0.0 and math.isclose(rates[-1], 0.05, rel_tol=1e-6)
    assert all(b > a for a, b in zip(rates, rates[1:]))
    assert not hasattr(model.class_block, 'drop_path')  # the class block has none


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="choose one of .*'tiny'"):
        GroupMamba('huge')
    with pytest.raises(ValueError, match='misses'):
        GroupMamba(dict(embed_dims=(16, 32, 64, 128)))
    with pytest.raises(ValueError, match='out_indices'):
        GroupMamba(SMALL, out_indices=(4, ))
    with pytest.raises(ValueError, match='out_type'):
        GroupMamba(SMALL, out_type='avg_featmap')
    with pytest.raises(ValueError, match='out_indices=\\(3,\\)'):
        GroupMamba(SMALL, out_type='cls_token', out_indices=(0, 1, 2, 3))
    with pytest.raises(ValueError, match='multiples of 4'):
        GroupMamba(dict(SMALL, embed_dims=(16, 32, 70, 96)))
    with pytest.raises(ValueError, match='4 stages'):
        GroupMamba(dict(SMALL, depths=(1, 1, 1)))
    with pytest.raises(ValueError, match='3 input channels'):
        GroupMamba(SMALL)(torch.randn(1, 1, 32, 32))


@pytest.fixture(scope='module')
def official_tiny(tmp_path_factory):
    """Our random tiny classifier written back in the official format (a bare state dict), the
    model, the official state dict and the file converted by the API."""
    tmp_path = tmp_path_factory.mktemp('groupmamba_official')
    torch.manual_seed(1)
    model = GroupMamba('tiny', out_type='cls_token')
    model.init_weights()
    width = model.dims[-1]
    ours = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    for head in ('head', 'dist_head'):
        ours[f'head.{head}.weight'] = torch.randn(1000, width) * 0.02
        ours[f'head.{head}.bias'] = torch.randn(1000) * 0.02
    official = official_state_dict(arch_spec('tiny'), 'groupmamba_keys_tiny', ours)
    src = tmp_path / 'groupmamba_tiny_ema.pth'
    torch.save(official, src)
    converted = tmp_path / 'groupmamba_tiny_in1k.pth'
    torch.save(convert_checkpoint(str(src), 'groupmamba-t'), converted)
    return src, model.eval(), official, converted


def test_converter_cli_round_trip_into_classifier_config(tmp_path, official_tiny):
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    from vssm_mm.checkpoint.convert import ConversionError
    src, model, official, _ = official_tiny
    dst = tmp_path / 'converted.pth'
    result = run_tool(['tools/convert_checkpoint.py', '--arch', 'groupmamba-t', str(src), str(dst)])
    assert 'bare weights' in result.stdout
    # A wrong architecture is reported key by key.
    with pytest.raises(ConversionError, match='shape mismatches'):
        convert_checkpoint(str(src), 'groupmamba-s')

    cfg = Config.fromfile(str(REPO / 'configs/groupmamba/tiny_in1k.py'))
    init_default_scope('mmpretrain')
    classifier = MODELS.build(cfg.model).eval()
    load_checkpoint(classifier, str(dst), strict=True)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        feature = model(x)[0]
        expected = (feature @ official['head.weight'].T + official['head.bias'] +
                    feature @ official['dist_head.weight'].T + official['dist_head.bias']) / 2
        logits = classifier(x, mode='tensor')
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_pretrained_init_into_dense_backbones(official_tiny):
    from mmengine.config import Config

    from vssm_mm.registry import MODELS
    _, model, _, dst = official_tiny
    cfg = Config.fromfile(str(REPO / 'configs/groupmamba/tiny_coco.py')).model.backbone
    seg = Config.fromfile(str(REPO / 'configs/groupmamba/tiny_ade20k.py')).model.backbone
    assert seg.init_cfg == cfg.init_cfg  # the same mechanism initialises the UperNet backbone
    cfg.init_cfg.checkpoint = str(dst)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    ours = backbone.state_dict()
    loaded = [k for k in model.state_dict() if k in ours]
    assert len(loaded) == len(ours) - 8  # everything but out_norms.0..3
    for key in loaded:
        torch.testing.assert_close(ours[key], model.state_dict()[key], msg=key)


CONFIGS = sorted(glob.glob(str(REPO / 'configs' / 'groupmamba' / '*.py')))


def test_config_list_is_complete():
    names = {p.rsplit('/', 1)[1] for p in CONFIGS}
    assert names == {f'{a}_{task}.py' for a in ARCHS for task in ('in1k', 'coco', 'ade20k')}


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
    model = importlib.import_module(f'{library}.registry').MODELS.build(cfg.model)
    backbone = model.backbone
    assert isinstance(backbone, GroupMamba)
    assert backbone.arch_name == name.split('_')[0]
    if library == 'mmpretrain':
        assert _count(model) == PARAMS[backbone.arch_name]  # the teacher is not counted
        assert backbone.out_type == 'cls_token' and model.with_teacher
        assert math.isclose(cfg.model.backbone.drop_path_rate, 0.05)
        return
    assert backbone.out_indices == (0, 1, 2, 3) and backbone.out_type == 'featmap'
    widths = cfg.model.neck.in_channels if library == 'mmdet' else \
        cfg.model.decode_head.in_channels
    assert list(widths) == list(backbone.dims)
    if library == 'mmseg':
        assert cfg.model.auxiliary_head.in_channels == backbone.dims[2]
    assert math.isclose(cfg.model.backbone.drop_path_rate, 0.2)
    assert _count(model) == DENSE_PARAMS[name]


def test_in1k_recipe_is_the_official_one():
    """lr 1e-3 at batch 1024, wd 0.05 (also on A_logs / dt_projs_bias, not on 1-D tensors),
    20 warm-up epochs from 1e-6, cosine to 1e-5, Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
    clip 5, EMA 0.9999, hard distillation (alpha 0.5) from RegNetY-16GF."""
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(REPO / 'configs/groupmamba/base_in1k.py'))
    assert cfg.train_dataloader.batch_size == 128 and cfg.auto_scale_lr.base_batch_size == 1024
    augments = [(a.type, a.alpha) for a in cfg.model.train_cfg.augments]
    assert augments == [('Mixup', 0.8), ('CutMix', 1.0)]
    assert cfg.model.head.loss.label_smooth_val == 0.1
    assert cfg.optim_wrapper.clip_grad.max_norm == 5.0
    warmup, cosine = cfg.param_scheduler
    assert math.isclose(1e-3 * warmup.start_factor, 1e-6) and warmup.end == 20
    assert cosine.eta_min == 1e-5 and cosine.convert_to_iter_based
    ema, = cfg.custom_hooks
    assert ema.momentum == 1e-4 and ema.update_buffers
    head = cfg.model.head
    assert (head.distillation_type, head.alpha) == ('hard', 0.5)
    assert cfg.model.teacher.model_name == 'regnety_160'
    assert cfg.model.teacher_checkpoint.endswith('regnety_160-a5fe301d.pth')

    init_default_scope('mmpretrain')
    model = GroupMamba(SMALL, out_type='cls_token')
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        assert group['lr'] == 1e-3
        for param in group['params']:
            decay[names[id(param)]] = group['weight_decay']
    layer = 'stages.0.blocks.0.mixer.'
    assert decay[layer + 'ssm.A_log'] == decay[layer + 'ssm.dt_proj_bias'] == 0.05
    assert decay[layer + 'ssm.x_proj_weight'] == decay[layer + 'proj.weight'] == 0.05
    assert decay[layer + 'ssm.D'] == decay[layer + 'skip_scale'] == 0.0
    assert decay[layer + 'norm.weight'] == decay['stem.conv.1.weight'] == 0.0
    assert decay[layer + 'fc1.bias'] == decay['class_norm.bias'] == 0.0


def _toy_teacher(tmp_path, num_classes):
    """A small mmpretrain ResNet classifier and an mmengine-style checkpoint of it."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    cfg = dict(type='ImageClassifier',
               backbone=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8),
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=64))
    path = tmp_path / 'teacher.pth'
    torch.save({'state_dict': MODELS.build(cfg).state_dict(), 'meta': {}}, path)
    return cfg, str(path)


@pytest.mark.slow
@pytest.mark.parametrize('task,config', [('cls', 'tiny_in1k.py'), ('det', 'tiny_coco.py'),
                                         ('seg', 'tiny_ade20k.py')])
def test_one_training_iteration(task, config, demo_data, tmp_path):
    """One iteration of the real configs; ImageNet with distillation from a toy teacher."""
    library = {'cls': 'mmpretrain', 'det': 'mmdet', 'seg': 'mmseg'}[task]
    if not has_mm_stack(library):
        pytest.skip(f'{library} is not installed')
    cfg = smoke_config(REPO / 'configs' / 'groupmamba' / config, task, demo_data, tmp_path,
                       iters=1, validate=task == 'cls')
    cfg.train_dataloader.batch_size = 2
    if task == 'cls':
        cfg.model.teacher, cfg.model.teacher_checkpoint = _toy_teacher(tmp_path, 3)
    runner = run_smoke_training(cfg)
    assert (tmp_path / 'iter_1.pth').is_file()
    scalars = runner.message_hub.log_scalars
    assert math.isfinite(scalars['train/loss'].current())
    if task == 'cls':
        assert scalars['train/loss_dist'].current() > 0
        assert 'val/accuracy/top1' in scalars
