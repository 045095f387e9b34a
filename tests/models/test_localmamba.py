"""LocalMamba (LocalVim, LocalVMamba): exact sizes, official outputs, conversion, the direction
search, configs, training smoke."""
import glob
import math

import pytest
import torch
import torch.nn.functional as F
from vssm_testing import (REPO, count_params, has_mm_stack, official_state_dict, read_key_dump,
                          run_smoke_training, run_tool, smoke_config)

from vssm_mm.checkpoint import safe_load
from vssm_mm.checkpoint.convert import (ARCHS, KEY_MAPS, ArchSpec, ConversionError,
                                        build_reference_keys, check_keys, convert_checkpoint,
                                        convert_state_dict, register_arch)
from vssm_mm.checkpoint.families.localmamba import VMAMBA_CLASSIFIER_KEYS, convert_localvim
from vssm_mm.models.backbones import LocalVim, LocalVMamba
from vssm_mm.models.layers.localmamba_blocks import SEARCHED_DIRECTIONS, resolve_directions
from vssm_mm.ops.scan_orders import LOCALMAMBA_DIRECTIONS

FIXTURES = REPO / 'tests' / 'fixtures'
# ImageNet classifiers (backbone + final norm + Linear(width, 1000)), as measured on the
# official code.
PARAMS = {('LocalVim', 'tiny'): 7_994_152, ('LocalVim', 'tiny_mid'): 7_994_536,
          ('LocalVim', 'small'): 27_783_784, ('LocalVim', 'search'): 5_473_288,
          ('LocalVMamba', 'tiny'): 25_527_160, ('LocalVMamba', 'small'): 49_748_536,
          ('LocalVMamba', 'tiny_search'): 4_576_656, ('LocalVMamba', 'small_search'): 9_148_512}
CONVERTER_ARCH = {('LocalVim', 'tiny'): 'localvim-t', ('LocalVim', 'tiny_mid'): 'localvim-t-mid',
                  ('LocalVim', 'small'): 'localvim-s', ('LocalVim', 'search'): 'localvim-search',
                  ('LocalVMamba', 'tiny'): 'localvmamba-t',
                  ('LocalVMamba', 'small'): 'localvmamba-s',
                  ('LocalVMamba', 'tiny_search'): 'localvmamba-t-search',
                  ('LocalVMamba', 'small_search'): 'localvmamba-s-search'}
KEY_DUMPS = {('LocalVim', 'tiny'): 'local_vim_tiny',
             ('LocalVim', 'tiny_mid'): 'local_vim_tiny_middle_cls_token',
             ('LocalVim', 'small'): 'local_vim_small',
             ('LocalVim', 'search'): 'local_vim_tiny_search',
             ('LocalVMamba', 'tiny'): 'local_vssm_tiny',
             ('LocalVMamba', 'small'): 'local_vssm_small',
             ('LocalVMamba', 'tiny_search'): 'local_vssm_tiny_search',
             ('LocalVMamba', 'small_search'): 'local_vssm_small_search'}
# A LocalVim small enough for CPU tests (one layer per stage).
VIM_SMALL = dict(embed_dim=32, depth=4, directions=SEARCHED_DIRECTIONS['localvim'][:4])
VMAMBA_SMALL = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1),
                    directions=SEARCHED_DIRECTIONS['localvmamba_tiny'][:5])


def _count(module):
    return count_params(module)


def _read_dump(name):
    return read_key_dump(f'localmamba_keys_{name}')


@pytest.mark.parametrize('family,arch', list(PARAMS), ids=lambda x: str(x))
def test_classifier_parameter_counts_and_official_keys(family, arch):
    """Exact sizes, and every key of the official classifier maps onto ours with its shape."""
    spec = ARCHS[CONVERTER_ARCH[family, arch]]
    reference = build_reference_keys(spec, dense=False, num_classes=1000)
    params = sum(math.prod(s) for k, s in reference.items() if '.rope.freqs_' not in k)
    assert params == PARAMS[family, arch]
    official = {k: torch.empty(s) for k, s in _read_dump(KEY_DUMPS[family, arch]).items()}
    converted, dense = convert_state_dict(official, spec)
    assert not dense
    assert check_keys(converted, reference, dense=False) == []


def test_dense_backbone_sizes_and_official_keys():
    # LocalVMamba-T Mask R-CNN backbone: official keys already carry our names.
    official = {'backbone.' + k: torch.empty(s)
                for k, s in _read_dump('backbone_local_vssm_tiny_det').items()}
    converted, dense = convert_state_dict(official, ARCHS['localvmamba-t'])
    assert dense
    reference = build_reference_keys(ARCHS['localvmamba-t'], dense=True, num_classes=None)
    assert check_keys(converted, reference, dense=True) == []
    assert sum(math.prod(s) for s in reference.values()) == 24_759_504
    # LocalVim segmentation (512, four outputs) and detection (1024, layer 19) backbones: the
    # official 'outnorm_{j}' (j-th output) is 'outnorm{stage}' for the key map.
    for dump, img_size, stages, params in [('backbone_local_vim_tiny_seg512', 512, (0, 1, 2, 3),
                                            7_965_312),
                                           ('backbone_local_vim_tiny_det1024', 1024, (3, ),
                                            8_553_984)]:
        model = LocalVim('tiny', img_size=img_size, out_indices=stages, final_norm=False,
                         norm_type='ln')
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {}
        for key, shape in _read_dump(dump).items():
            if key.startswith('outnorm_'):
                j, rest = key[len('outnorm_'):].split('.', 1)
                key = f'outnorm{stages[int(j)]}.{rest}'
            theirs[key] = torch.empty(shape)
        assert {k: tuple(v.shape) for k, v in KEY_MAPS['LocalVim'](theirs).items()} == ours
        assert _count(model) == params


def _vim_arch(settings, **extra):
    return dict(VIM_SMALL, directions=settings['directions'], **extra)


def _logits(model, images, head):
    feats = model(images)[0]
    if feats.dim() == 4:
        feats = feats.mean((2, 3))
    return feats @ head['head.fc.weight'].T + head['head.fc.bias']


@torch.no_grad()
def test_localvim_logits_equal_official():
    """The official LocalVim (fixture made by make_localmamba_official_fixtures.py).

    Square input at the build grid: equal by default. Non-square input (position / RoPE tables
    resized on the fly): equal with ``official_vertical_quirk``, different without it. The
    A_log_k of a layer differ in the fixture (as in GPU-trained checkpoints); building the
    official CPU-aliased A_log reproduces the official CPU model instead.
    """
    path = FIXTURES / 'localmamba_official_vim.pth'
    fixture = safe_load(path)
    arch = _vim_arch(fixture['settings'])
    register_arch('test-localvim', ArchSpec('LocalVim', arch, convert=convert_localvim,
                                            backbone_kwargs=dict(img_size=112)))
    converted = convert_checkpoint(str(path), 'test-localvim')
    state = converted['state_dict']
    assert converted['meta']['num_classes'] == 10
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}

    def model(**kwargs):
        net = LocalVim(arch, img_size=112, **kwargs).eval()
        result = net.load_state_dict(backbone, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        return net

    default, quirk = model(), model(official_vertical_quirk=True)
    square, non_square = fixture['images'], fixture['images_non_square']
    torch.testing.assert_close(_logits(default, square, state), fixture['logits'], rtol=0,
                               atol=1e-4)
    torch.testing.assert_close(_logits(quirk, non_square, state), fixture['logits_non_square'],
                               rtol=0, atol=1e-4)
    assert (_logits(default, non_square, state) - fixture['logits_non_square']).abs().max() > 1e-2
    shared = model(official_shared_A_log=True)
    torch.testing.assert_close(_logits(shared, square, state), fixture['logits_shared_A_log'],
                               rtol=0, atol=1e-4)
    assert (fixture['logits_shared_A_log'] - fixture['logits']).abs().max() > 1e-2


@torch.no_grad()
def test_localvim_middle_cls_logits_equal_official():
    path = FIXTURES / 'localmamba_official_vim_mid.pth'
    fixture = safe_load(path)
    arch = _vim_arch(fixture['settings'], rope=False, cls_token=True)
    state, _ = convert_state_dict(fixture['state_dict'], ARCHS['localvim-t-mid'])
    model = LocalVim(arch, img_size=112, out_type='cls_token').eval()
    model.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith('backbone.')},
                          strict=True)
    torch.testing.assert_close(_logits(model, fixture['images'], state), fixture['logits'],
                               rtol=0, atol=1e-4)
    # Unlike the official code, other input sizes work (the cls position entry is kept).
    assert model(torch.randn(1, 3, 80, 130))[0].shape == (1, 32)


@torch.no_grad()
def test_localvim_dense_backbone_equals_official():
    """Official Backbone_LocalVisionMamba (LayerNorm blocks, outnorm_j of 4 layers), built for
    128 x 128 and run on a 96 x 150 input."""
    fixture = safe_load(FIXTURES / 'localmamba_official_vim_backbone.pth')
    state = {k.replace('outnorm_', 'outnorm'): v for k, v in fixture['state_dict'].items()}
    model = LocalVim(_vim_arch(fixture['settings']), img_size=128, out_indices=(0, 1, 2, 3),
                     final_norm=False, norm_type='ln', official_vertical_quirk=True).eval()
    model.load_state_dict(KEY_MAPS['LocalVim'](state), strict=True)
    outs = model(fixture['images'])
    assert len(outs) == 4
    for ours, theirs in zip(outs, fixture['outs']):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize('name', ['vmamba', 'vmamba_search'])
@torch.no_grad()
def test_localvmamba_logits_equal_official(name):
    path = FIXTURES / f'localmamba_official_{name}.pth'
    fixture = safe_load(path)
    settings = fixture['settings']
    arch = dict(dims=(16, 32, 64, 128), depths=tuple(settings['depths']),
                directions=settings.get('directions', 'search'))
    register_arch(f'test-{name}', ArchSpec('LocalVMamba', arch, VMAMBA_CLASSIFIER_KEYS))
    state = convert_checkpoint(str(path), f'test-{name}')['state_dict']
    backbone = {k[9:]: v for k, v in state.items() if k.startswith('backbone.')}
    default = LocalVMamba(arch).eval()
    default.load_state_dict(backbone, strict=True)
    quirk = LocalVMamba(arch, official_vertical_quirk=True).eval()
    quirk.load_state_dict(backbone, strict=True)
    assert default.search == (name == 'vmamba_search')
    torch.testing.assert_close(_logits(default, fixture['images'], state), fixture['logits'],
                               rtol=0, atol=1e-4)
    # 70 x 90: odd, non-square maps at every stage, window padding everywhere.
    non_square = fixture['images_non_square']
    torch.testing.assert_close(_logits(quirk, non_square, state), fixture['logits_non_square'],
                               rtol=0, atol=1e-4)
    assert (_logits(default, non_square, state) - fixture['logits_non_square']).abs().max() > 1e-2


@pytest.mark.parametrize('length', [1, 2, 3, 4, 9, 196])
def test_causal_conv_equals_conv1d(length):
    """The CPU path (shifted multiply-adds) gives F.conv1d's causal outputs and gradients."""
    from vssm_mm.models.backbones.localvim import CausalDepthwiseConv1d
    conv = CausalDepthwiseConv1d(6, 4).double()
    x = torch.randn(2, 6, length, dtype=torch.float64, requires_grad=True)
    expected = F.conv1d(x, conv.weight, conv.bias, padding=3, groups=6)[..., :length]
    assert torch.allclose(conv(x), expected, rtol=1e-12, atol=1e-12)
    torch.autograd.gradcheck(conv, (x, ))
    conv.bias = None
    assert torch.allclose(conv(x), F.conv1d(x, conv.weight, None, padding=3,
                                            groups=6)[..., :length], rtol=1e-12, atol=1e-12)
    conv = conv.float()  # float32, and under autocast the conv1d path in bfloat16
    x32 = x.detach().float()
    assert torch.allclose(conv(x32), F.conv1d(x32, conv.weight, None, padding=3,
                                              groups=6)[..., :length], rtol=1e-5, atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert conv(x32).dtype == torch.bfloat16


@pytest.mark.parametrize('size', [(64, 64), (97, 75), (33, 130)])
def test_any_input_size(size):
    vim = LocalVim(VIM_SMALL, out_indices=(0, 1, 2, 3), final_norm=False).eval()
    vmamba = LocalVMamba(VMAMBA_SMALL, out_indices=(0, 1, 2, 3)).eval()
    height, width = size
    with torch.no_grad():
        vim_outs, vmamba_outs = vim(torch.randn(1, 3, *size)), vmamba(torch.randn(1, 3, *size))
    grid = (math.ceil(height / 16), math.ceil(width / 16))
    assert all(tuple(o.shape) == (1, 32, *grid) and torch.isfinite(o).all() for o in vim_outs)
    h, w = height // 4, width // 4
    for out, dim in zip(vmamba_outs, VMAMBA_SMALL['dims']):
        assert tuple(out.shape) == (1, dim, h, w) and torch.isfinite(out).all()
        h, w = (h + 1) // 2, (w + 1) // 2


def test_position_tables_resize_when_loading():
    """A checkpoint made for 112 x 112 (7 x 7 tokens) loads into a 128 x 128 model: the position
    embedding and RoPE tables are resized bicubically, as the official backbone does."""
    small = LocalVim(VIM_SMALL, img_size=112)
    large = LocalVim(VIM_SMALL, img_size=128, out_indices=(0, 1, 2, 3), final_norm=False)
    result = large.load_state_dict(small.state_dict(), strict=False)
    assert set(result.missing_keys) == {
        f'out_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias')}
    assert set(result.unexpected_keys) == {'norm_f.weight'}

    def bicubic(table):  # (1, 49, C) -> (1, 64, C)
        grid = table.reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(8, 8), mode='bicubic', align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, 64, -1)

    torch.testing.assert_close(large.pos_embed, bicubic(small.pos_embed))
    torch.testing.assert_close(large.rope.freqs_cos, bicubic(small.rope.freqs_cos[None])[0])
    torch.testing.assert_close(large.blocks[2].mixer.in_proj.weight,
                               small.blocks[2].mixer.in_proj.weight)


@pytest.mark.parametrize('family', ['LocalVim', 'LocalVim-mid', 'LocalVMamba-search'])
def test_gradients_flow_on_non_square_input(family):
    torch.manual_seed(0)
    if family == 'LocalVMamba-search':
        model = LocalVMamba(dict(VMAMBA_SMALL, depths=(1, 1, 1, 1), directions='search'),
                            out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    else:
        extra = dict(rope=False, cls_token=True) if family == 'LocalVim-mid' else {}
        model = LocalVim(dict(VIM_SMALL, **extra), out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    model.init_weights()
    outs = model(torch.randn(2, 3, 45, 70))
    # Random projections: a squared LayerNorm output alone is almost constant in its input.
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_frozen_stages():
    for model, stem in [
        (LocalVim(VIM_SMALL, out_indices=(0, 1, 2, 3), final_norm=False, frozen_stages=2,
                  drop_path_rate=0.0), ('patch_embed', 'blocks')),
        (LocalVMamba(VMAMBA_SMALL, out_indices=(0, 1, 2, 3), frozen_stages=2,
                     drop_path_rate=0.0), ('stem', 'stages')),
    ]:
        stem, stages = stem
        model.train()
        before = {n: p.clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        sum(o.mean() for o in model(torch.randn(1, 3, 64, 64))).backward()
        optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        frozen = (stem, 'pos_embed', f'{stages}.0.', f'{stages}.1.', 'out_norms.0.',
                  'out_norms.1.')
        assert changed and not any(n.startswith(frozen) for n in changed)
        assert any(n.startswith(f'{stages}.2.') for n in changed)
        layers = getattr(model, stages)
        assert not layers[0].training and layers[2].training
    with pytest.raises(ValueError, match='frozen_stages'):
        LocalVMamba(VMAMBA_SMALL, frozen_stages=5)


def test_with_cp_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    for family, arch in [(LocalVim, VIM_SMALL), (LocalVMamba, VMAMBA_SMALL)]:
        plain = family(arch, out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
        ckpt = family(arch, out_indices=(0, 1, 2, 3), drop_path_rate=0.0, with_cp=True)
        ckpt.load_state_dict(plain.state_dict())
        x = torch.randn(1, 3, 32, 40)
        for model in (plain, ckpt):
            model.train()
            sum(o.sum() for o in model(x)).backward()
        for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
            torch.testing.assert_close(b.grad, a.grad, msg=name, rtol=1e-4, atol=1e-5)


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="choose one of .*'tiny'"):
        LocalVim('huge')
    with pytest.raises(ValueError, match='misses'):
        LocalVMamba(dict(dims=(8, 16, 32, 64)))
    with pytest.raises(ValueError, match='entries but the model has'):
        LocalVim(dict(VIM_SMALL, directions='localvim'))
    with pytest.raises(ValueError, match='need distinct names'):
        LocalVim(dict(VIM_SMALL, directions=[('h', 'w3')] * 4))
    with pytest.raises(ValueError, match='unknown directions'):
        LocalVMamba('tiny', directions='localvim_tiny')
    with pytest.raises(ValueError, match='class token'):
        LocalVim(VIM_SMALL, out_type='cls_token')
    with pytest.raises(ValueError, match='out_indices'):
        LocalVim(VIM_SMALL, out_indices=(4, ))
    with pytest.raises(ValueError, match='too small'):
        LocalVMamba(VMAMBA_SMALL)(torch.randn(1, 3, 8, 8))


def test_released_direction_lists():
    """The search's export: 4-subsets in canonical order, one per layer / block."""
    lengths = {'localvim': 20, 'localvim_unsearched': 20, 'localvmamba_tiny': 15,
               'localvmamba_small': 33}
    assert set(SEARCHED_DIRECTIONS) == set(lengths)
    for name, count in lengths.items():
        layers, search = resolve_directions(name, count)
        assert not search and len(layers) == count
        for layer in layers:
            assert len(layer) == 4 and list(layer) == sorted(layer, key=LOCALMAMBA_DIRECTIONS.index)
    assert SEARCHED_DIRECTIONS['localvmamba_tiny'][13] == (
        'h_flip', 'v_flip', 'w2_flip', 'w7_flip')
    assert SEARCHED_DIRECTIONS['localvmamba_small'][32] == ('h', 'v', 'w7', 'w7_flip')


@pytest.fixture(scope='module')
def official_localvim(tmp_path_factory):
    """Our random LocalVim-T written in the official release format, and its conversion."""
    tmp_path = tmp_path_factory.mktemp('localvim')
    torch.manual_seed(1)
    model = LocalVim('tiny')
    model.init_weights()
    ours = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    ours['head.fc.weight'] = torch.randn(1000, 192) * 0.02
    ours['head.fc.bias'] = torch.randn(1000) * 0.02
    official = official_state_dict(ARCHS['localvim-t'], 'localmamba_keys_local_vim_tiny', ours)
    src, dst = tmp_path / 'local_vim_tiny.ckpt', tmp_path / 'localvim_tiny_in1k.pth'
    torch.save({'state_dict': official}, src)
    result = run_tool(['tools/convert_checkpoint.py', '--arch', 'localvim-t', str(src), str(dst)])
    assert 'raw weights' in result.stdout
    return src, dst, model.eval(), official


def test_converter_cli_round_trip_into_classifier_config(official_localvim):
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    src, dst, model, official = official_localvim
    with pytest.raises(ConversionError, match='shape mismatches'):
        convert_checkpoint(str(src), 'localvim-t-mid')

    cfg = Config.fromfile(str(REPO / 'configs/localmamba/localvim_tiny_in1k.py'))
    init_default_scope('mmpretrain')
    classifier = MODELS.build(cfg.model).eval()
    load_checkpoint(classifier, str(dst), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected = model(x)[0].mean((2, 3)) @ official['head.weight'].T + \
            official['head.bias']
        logits = classifier(x, mode='tensor')
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('config', ['localvim_tiny_ade20k.py', 'localvim_tiny_coco_lsj_100e.py'])
def test_pretrained_init_into_dense_localvim(official_localvim, config):
    from mmengine.config import Config

    from vssm_mm.registry import MODELS
    _, dst, model, _ = official_localvim
    cfg = Config.fromfile(str(REPO / 'configs' / 'localmamba' / config)).model.backbone
    cfg.init_cfg.checkpoint = str(dst)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    ours = backbone.state_dict()
    side = backbone.grid[0]
    assert ours['pos_embed'].shape == (1, side * side, 192)
    assert ours['rope.freqs_sin'].shape == (side * side, 192)
    for key, value in model.state_dict().items():
        if key.startswith('blocks.') and not key.endswith('norm.bias'):
            torch.testing.assert_close(ours[key], value, msg=key)


def test_pretrained_init_into_dense_localvmamba(tmp_path):
    from mmengine.config import Config

    from vssm_mm.registry import MODELS
    torch.manual_seed(2)
    model = LocalVMamba('tiny')
    ours = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    ours.update({'head.fc.weight': torch.zeros(1000, 768), 'head.fc.bias': torch.zeros(1000)})
    official = official_state_dict(ARCHS['localvmamba-t'], 'localmamba_keys_local_vssm_tiny',
                                   ours)
    src, dst = tmp_path / 'local_vssm_tiny.ckpt', tmp_path / 'localvmamba_tiny_in1k.pth'
    torch.save({'state_dict': official}, src)
    torch.save(convert_checkpoint(str(src), 'localvmamba-t'), dst)
    cfg = Config.fromfile(str(REPO / 'configs/localmamba/localvmamba_tiny_coco.py')).model.backbone
    cfg.init_cfg.checkpoint = str(dst)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    ours = backbone.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ours[key], value, msg=key)


CONFIGS = sorted(glob.glob(str(REPO / 'configs' / 'localmamba' / '*.py')))
CLS_PARAMS = {'localvim_tiny_in1k.py': 7_994_152, 'localvim_tiny_mid_in1k.py': 7_994_536,
              'localvim_small_in1k.py': 27_783_784, 'localvmamba_tiny_in1k.py': 25_527_160,
              'localvmamba_small_in1k.py': 49_748_536, 'localvim_search_in1k.py': 5_473_288,
              'localvmamba_tiny_search_in1k.py': 4_576_656,
              'localvmamba_small_search_in1k.py': 9_148_512}
DENSE = {'localvmamba_tiny_coco.py', 'localvmamba_small_coco.py', 'localvmamba_tiny_coco_3x.py',
         'localvmamba_small_coco_3x.py', 'localvim_tiny_coco_lsj_100e.py',
         'localvim_tiny_ade20k.py', 'localvim_small_ade20k.py', 'localvmamba_tiny_ade20k.py',
         'localvmamba_small_ade20k.py'}


def test_config_list_is_complete():
    assert {p.rsplit('/', 1)[1] for p in CONFIGS} == set(CLS_PARAMS) | DENSE


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.rsplit('/', 1)[1])
def test_config_builds(path):
    name = path.rsplit('/', 1)[1]
    library = 'mmpretrain' if name.endswith('_in1k.py') else \
        'mmdet' if '_coco' in name else 'mmseg'
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
    assert type(backbone).__name__ == ('LocalVim' if 'localvim' in name else 'LocalVMamba')
    if library == 'mmpretrain':
        assert _count(model) == CLS_PARAMS[name]
        assert backbone.out_indices == (3, ) and backbone.search == ('search' in name)
    elif name == 'localvim_tiny_coco_lsj_100e.py':
        assert backbone.out_indices == (3, ) and backbone.grid == (64, 64)
        assert 30_600_000 < _count(model) < 30_700_000  # paper: 31M
    else:
        assert backbone.out_indices == (0, 1, 2, 3)
        widths = cfg.model.neck.in_channels if library == 'mmdet' else \
            cfg.model.decode_head.in_channels
        assert list(widths) == list(backbone.dims)


def _small_batches(cfg, task):
    """Small batches; the LSJ config's 1024 x 1024 batch padding becomes 128 x 128."""
    cfg.train_dataloader.batch_size = 1 if task == 'det' else 2
    if cfg.get('val_dataloader'):
        cfg.val_dataloader.batch_size = 2 if task == 'cls' else 1
    if task == 'det':
        cfg.model.data_preprocessor.batch_augments[0].size = (128, 128)
    return cfg


@pytest.mark.parametrize('task,config', [('cls', 'localvim_tiny_mid_in1k.py'),
                                         ('det', 'localvim_tiny_coco_lsj_100e.py'),
                                         ('seg', 'localvim_tiny_ade20k.py')])
def test_one_training_iteration(task, config, demo_data, tmp_path):
    library = {'cls': 'mmpretrain', 'det': 'mmdet', 'seg': 'mmseg'}[task]
    if not has_mm_stack(library):
        pytest.skip(f'{library} is not installed')
    # Validation runs for cls and seg (non-square whole-image inference: position tables are
    # resized on the fly); the detector's inputs are padded squares like its training batches.
    cfg = smoke_config(REPO / 'configs' / 'localmamba' / config, task, demo_data, tmp_path,
                       iters=1, validate=task != 'det')
    runner = run_smoke_training(_small_batches(cfg, task))
    assert (tmp_path / 'iter_1.pth').is_file()
    assert math.isfinite(runner.message_hub.log_scalars['train/loss'].current())


def test_search_trains_one_iteration(demo_data, tmp_path):
    """The LocalVim supernet config trains (its recipe, hooks and optimizer as configured; four
    layers instead of twenty to keep the CPU test short): the direction weights are trained
    jointly with the network by the same AdamW, weight decay included, as in the official
    search."""
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    cfg = smoke_config(REPO / 'configs/localmamba/localvim_search_in1k.py', 'cls', demo_data,
                       tmp_path, iters=1, validate=False)
    cfg.model.backbone.arch = dict(embed_dim=128, depth=4, directions='search')
    # Stochastic depth off: with two images, DropPath drops a layer's branch for both of them
    # a few percent of the time, which leaves that layer's direction weights without a gradient.
    cfg.model.backbone.drop_path_rate = 0.0
    runner = run_smoke_training(_small_batches(cfg, 'cls'))
    backbone = runner.model.backbone
    assert backbone.search and (tmp_path / 'iter_1.pth').is_file()
    optimizer = runner.optim_wrapper.optimizer
    for block in backbone.blocks:
        weights = block.mixer.direction_merge.weights
        assert weights.shape == (8, 1, 1, 1)
        assert optimizer.state[weights]['exp_avg'].abs().sum() > 0
        group = next(g for g in optimizer.param_groups if any(p is weights for p in g['params']))
        assert group['weight_decay'] == pytest.approx(0.04)


@pytest.mark.parametrize('family,arch,base', [
    ('LocalVim', 'search', 'localvim_tiny_in1k.py'),
    ('LocalVMamba', 'tiny_search', 'localvmamba_tiny_in1k.py')])
def test_export_directions_from_supernet_checkpoint(tmp_path, family, arch, base):
    """The export tool turns a supernet checkpoint into per-layer direction lists (top-4 in
    canonical order) and a config that builds the searched model."""
    from mmengine.config import Config
    torch.manual_seed(0)
    supernet = LocalVim(arch) if family == 'LocalVim' else LocalVMamba(arch)
    state = {f'backbone.{k}': v for k, v in supernet.state_dict().items()}
    key = 'backbone.blocks.8.mixer.direction_merge.weights' if family == 'LocalVim' else \
        'backbone.stages.2.blocks.4.mixer.direction_merge.weights'  # block 8 overall
    state[key] = torch.tensor([5., 0, 4, 0, 0, 3, 6, 0]).view(8, 1, 1, 1)
    ckpt = tmp_path / 'epoch_100.pth'
    torch.save({'state_dict': state, 'meta': {'epoch': 100}}, ckpt)
    out = tmp_path / 'searched.py'
    num_layers = 20 if family == 'LocalVim' else 15
    result = run_tool(['tools/export_local_directions.py', str(ckpt), '--out', str(out),
                       '--base', str(REPO / 'configs/localmamba' / base)])
    assert f'wrote {num_layers} layers' in result.stdout
    searched = Config.fromfile(str(out))
    directions = searched.model.backbone.directions
    assert len(directions) == num_layers and directions[8] == ['h', 'v', 'w2_flip', 'w7']
    for layer in directions:
        assert len(layer) == 4 and layer == sorted(layer, key=LOCALMAMBA_DIRECTIONS.index)
    assert searched.model.backbone.arch == 'tiny'  # the searched lists go into the final model
    model = MODELS_BUILD(searched.model.backbone)
    assert not model.search and len(model.stem_and_stages()[1]) == 4
    ops = [block.mixer for block in model.blocks] if family == 'LocalVim' else \
        [block.mixer for stage in model.stages for block in stage.blocks]
    assert [list(op.directions) for op in ops] == directions
    if family == 'LocalVim':
        # Not a supernet: a clear error.
        plain = tmp_path / 'plain.pth'
        torch.save({'state_dict': LocalVim(VIM_SMALL).state_dict()}, plain)
        bad = run_tool(['tools/export_local_directions.py', str(plain)], check=False)
        assert bad.returncode != 0 and 'search supernet' in bad.stderr


def MODELS_BUILD(cfg):
    from vssm_mm.registry import MODELS
    return MODELS.build(cfg)


@pytest.mark.parametrize('arch,official', [('tiny', 1.482e9), ('tiny_mid', 1.489e9),
                                           ('small', 4.771e9)])
def test_paper_flops_formula_matches_official_count(arch, official):
    """The official analytic FLOP formula (what the paper reports) at 224x224."""
    flops = LocalVim(arch).paper_flops(224, 224, 1000)
    assert abs(flops / official - 1) < 0.002
