"""Official checkpoint files load directly (layout recognised and mapped on load)."""
import pytest
import torch
from torch import nn
from vssm_testing import REPO, official_state_dict, read_key_dump

from vssm_mm.checkpoint import install_mmengine_loader, safe_load
from vssm_mm.checkpoint.convert import ARCHS, ArchSpec, convert_checkpoint, register_arch
from vssm_mm.checkpoint.families import VMAMBA_CLASSIFIER_KEYS
from vssm_mm.checkpoint.official import find_archs, map_official_checkpoint
from vssm_mm.checkpoint.state_dict import ConversionError
from vssm_mm.models.backbones import EfficientVMamba, MSVMamba

FIXTURES = REPO / 'tests' / 'fixtures'
EVM_FIXTURE_ARCH = dict(dims=(16, 32, 64, 128), depths=(1, 2, 2, 1))
# Official classifier key dumps and the architectures they are.
DUMPS = {'msvmamba_keys_nano': ['msvmamba-n'], 'msvmamba_keys_v2_small': ['msvmamba2-s'],
         'efficientvmamba_keys_small': ['efficientvmamba-s'],
         'groupmamba_keys_base': ['groupmamba-b'],
         'localmamba_keys_local_vim_tiny_middle_cls_token': ['localvim-t-mid'],
         'localmamba_keys_local_vim_small': ['localvim-s', 'localvim-s-unsearched'],
         'localmamba_keys_local_vssm_tiny_search': ['localvmamba-t-search']}


def _dump(name):
    return {k: torch.zeros(s) for k, s in read_key_dump(name).items() if k != '__sections__'}


@pytest.mark.parametrize('dump', list(DUMPS))
def test_official_classifiers_are_recognised_and_fit_one_arch(dump):
    mapped = map_official_checkpoint({'model': _dump(dump), 'model_ema': _dump(dump),
                                      'epoch': 300})
    assert sorted(mapped) == ['epoch', 'meta', 'state_dict'] and mapped['epoch'] == 300
    assert mapped['meta']['archs'] == DUMPS[dump]
    assert mapped['meta']['weights'] == 'ema'
    assert find_archs(mapped['state_dict']) == DUMPS[dump]  # our layout: the same answer
    assert find_archs(_dump(dump)) == DUMPS[dump]  # the official layout directly


def test_bare_official_state_dicts_are_recognised():
    """GroupMamba's released files are bare state dicts (no container)."""
    mapped = map_official_checkpoint(_dump('groupmamba_keys_tiny'))
    assert sorted(mapped) == ['meta', 'state_dict'] and mapped['meta']['weights'] == 'bare'
    assert mapped['meta']['archs'] == ['groupmamba-t']
    assert 'backbone.stages.0.blocks.0.mixer.ssm.A_log' in mapped['state_dict']


def test_official_detection_backbone_fits_the_dense_arch():
    state = {'backbone.' + k: v for k, v in _dump('msvmamba_keys_micro_backbone').items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    mapped = map_official_checkpoint({'state_dict': state, 'meta': {}})
    assert mapped['meta']['archs'] == ['msvmamba-m']
    assert 'neck.lateral_convs.0.conv.weight' in mapped['state_dict']
    assert 'backbone.stages.2.blocks.4.mixer.scan.ssm.A_log' in mapped['state_dict']


def test_other_checkpoints_come_back_unchanged():
    ours = {'state_dict': {f'backbone.{k}': v for k, v in MSVMamba('nano').state_dict().items()},
            'meta': {'epoch': 3}}
    teacher = {'state_dict': {'backbone.stem.conv.weight': torch.zeros(2, 3, 3, 3)}}
    for checkpoint in (ours, teacher, {'anything': 1}, [1, 2]):
        assert map_official_checkpoint(checkpoint) is checkpoint
    assert find_archs(ours['state_dict']) == ['msvmamba-n']
    assert find_archs(teacher['state_dict']) == []


def test_keys_without_a_place_in_our_model_are_refused():
    state = _dump('efficientvmamba_keys_tiny')
    # Inside our tree but in no model: mapped, fits no arch (strict loading then names it).
    state['layers.0.blocks.0.extra_gate.weight'] = torch.zeros(3)
    mapped = map_official_checkpoint({'state_dict': state})
    assert mapped['meta']['archs'] == []
    assert 'backbone.stages.0.blocks.0.extra_gate.weight' in mapped['state_dict']
    state['mystery.weight'] = torch.zeros(3)
    with pytest.raises(ConversionError, match='1 of its keys have no place') as error:
        map_official_checkpoint({'state_dict': state})
    assert 'backbone.mystery.weight' in str(error.value)


class _Classifier(nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Module()
        self.head.fc = nn.Linear(backbone.dims[-1], num_classes)

    def forward(self, images):
        return self.head.fc(self.backbone(images)[0].mean((2, 3)))


@torch.no_grad()
def test_load_from_an_official_file_reproduces_the_official_logits():
    """What ``load_from`` does (mmengine's load_checkpoint, strict) with the released format."""
    from mmengine.runner import load_checkpoint
    install_mmengine_loader()
    path = FIXTURES / 'efficientvmamba_official.pth'
    fixture = safe_load(path)
    model = _Classifier(EfficientVMamba(EVM_FIXTURE_ARCH), 10).eval()
    load_checkpoint(model, str(path), map_location='cpu', strict=True)
    torch.testing.assert_close(model(fixture['images']), fixture['logits'], rtol=0, atol=1e-4)


def test_pretrained_init_from_an_official_file_uses_the_ema_weights():
    """``init_cfg=dict(type='Pretrained', prefix='backbone.')`` with an official trainer file."""
    install_mmengine_loader()
    path = FIXTURES / 'msvmamba_official_v1.pth'
    arch = dict(MSVMamba.arch_zoo['tiny'], dims=(16, 32, 64, 128), depths=(1, 2, 2, 1))
    backbone = MSVMamba(arch, out_indices=(0, 1, 2, 3),
                        init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    backbone.init_weights()
    register_arch('test-official-loading', ArchSpec('MSVMamba', arch, VMAMBA_CLASSIFIER_KEYS))
    try:
        expected = convert_checkpoint(str(path), 'test-official-loading', weights='ema')
    finally:
        del ARCHS['test-official-loading']
    ours = backbone.state_dict()
    for key, value in expected['state_dict'].items():
        if key.startswith('backbone.') and 'out_norms.3' not in key:
            torch.testing.assert_close(ours[key[len('backbone.'):]], value, msg=key)


def test_round_trip_through_the_official_layout(tmp_path):
    """A model saved in the official layout loads back into an equal model."""
    from mmengine.runner import load_checkpoint
    install_mmengine_loader()
    torch.manual_seed(0)
    source = _Classifier(MSVMamba('nano'), 1000)
    official = official_state_dict(ARCHS['msvmamba-n'], 'msvmamba_keys_nano',
                                   source.state_dict())
    path = tmp_path / 'ckpt_epoch_299.pth'
    torch.save({'model': official, 'epoch': 299}, path)
    target = _Classifier(MSVMamba('nano'), 1000)
    load_checkpoint(target, str(path), map_location='cpu', strict=True)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
