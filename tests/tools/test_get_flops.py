"""The meta-device FLOP counter: fvcore's rules op by op, whole configs at the papers' sizes,
and the generated model zoo against the committed measurements."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vssm_testing import REPO, has_mm_stack, load_tool, run_tool

from vssm_mm.analysis import FlopCounter, model_complexity
from vssm_mm.ops.selective_scan import selective_scan


class _EveryCountedOp(nn.Module):
    """One call of each op fvcore counts (and a few it does not), with odd sizes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.group_conv = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.deconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.ln_plain = nn.LayerNorm(8, elementwise_affine=False)
        self.linear = nn.Linear(8, 6)
        self.conv1d = nn.Conv1d(6, 6, 4, groups=6, padding=3)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.register_buffer('A', -torch.rand(6, 4))

    def forward(self, x):
        x = self.bn(self.conv(x))                                   # 2 x 7 x 9
        x = self.gn(F.gelu(self.group_conv(x))) + x.sigmoid()
        up = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
        near = F.interpolate(x, size=(5, 6), mode='nearest')
        pooled = self.pool(up) + F.adaptive_avg_pool2d(near, 3)
        tokens = self.ln(x.flatten(2).transpose(1, 2))              # 2 x 63 x 8
        tokens = self.ln_plain(tokens) @ torch.ones(8, 8)
        seq = self.linear(tokens).transpose(1, 2)                   # 2 x 6 x 63
        seq = self.conv1d(seq)[..., :63]
        attn = torch.bmm(seq, seq.transpose(1, 2)).softmax(-1)     # 2 x 6 x 6
        mixed = torch.einsum('bcl,bdc->bdl', seq, attn)
        mixed = mixed + torch.einsum('bkl,bdl->bkd', seq, seq).sum()
        B = torch.einsum('bdl,nd->bnl', mixed, torch.ones(4, 6))
        y = selective_scan(mixed, seq, self.A, B, B, D=torch.ones(6), z=seq, delta_softplus=True)
        deconv = self.deconv(x)
        return y.sum() + pooled.sum() + deconv.sum() + torch.matmul(seq[0], seq[0].T).sum()


def test_counter_matches_mmengine_jit_analysis_on_every_rule():
    """The meta-device count equals mmengine's FlopAnalyzer (fvcore's jit count with the scan
    handle), the way the papers counted, op by op."""
    analysis = pytest.importorskip('mmengine.analysis')
    from vssm_mm.ops.selective_scan import SCAN_FLOP_HANDLES
    torch.manual_seed(0)
    model = _EveryCountedOp().eval()
    x = torch.randn(2, 3, 13, 17)
    analyzer = analysis.FlopAnalyzer(model, (x, ))
    analyzer.set_op_handle(**SCAN_FLOP_HANDLES)
    analyzer.unsupported_ops_warnings(False)
    analyzer.tracer_warnings('none')
    with torch.no_grad():
        expected = analyzer.total()
        by_op = analyzer.by_operator()
    result = model_complexity(model, x)
    assert result['flops'] == expected, (dict(by_op), result['by_operator'])
    assert result['params'] == sum(p.numel() for p in _EveryCountedOp().parameters())
    scan = result['by_operator']['selective_scan']
    assert scan == 9 * 2 * 63 * 6 * 4 + 2 * 2 * 6 * 63   # with D and with z
    assert result['by_operator']['layer_norm'] == 2 * 63 * 8 * (5 + 4)
    assert result['by_operator']['batch_norm'] == 2 * 8 * 7 * 9 * 2
    assert all(p.device.type == 'meta' for p in model.parameters())


def test_counter_counts_by_shape_only():
    """Counting a 2048 x 2048 input on the meta device allocates nothing and runs no math."""
    counter = FlopCounter()
    x = torch.empty(1, 64, 2048, 2048, device='meta')
    w = torch.empty(64, 64, 3, 3, device='meta')
    with counter:
        out = F.conv2d(x, w, padding=1)
        F.layer_norm(out.permute(0, 2, 3, 1), (64, ))
    assert out.device.type == 'meta'
    assert counter.by_operator == {'conv': 64 * 64 * 9 * 2048 * 2048,
                                   'layer_norm': 4 * 64 * 2048 * 2048}   # no affine


def test_flop_counter_mode_sees_the_scan_as_one_op():
    """torch.utils.flop_counter gets the papers' formula for the library op."""
    from torch.utils.flop_counter import FlopCounterMode

    from vssm_mm.ops.selective_scan.flops import scan_as_library_op
    u = torch.empty(2, 8, 10, device='meta')
    A = torch.empty(8, 4, device='meta')
    B = torch.empty(2, 1, 4, 10, device='meta')
    with scan_as_library_op(), FlopCounterMode(display=False) as mode:
        out = selective_scan(u, u, A, B, B, D=torch.empty(8, device='meta'))
    assert out.shape == u.shape and out.device.type == 'meta'
    assert mode.get_total_flops() == 9 * 2 * 10 * 8 * 4 + 2 * 8 * 10
    # Outside the context the eager path runs again on real tensors.
    real = selective_scan(torch.randn(1, 2, 3), torch.rand(1, 2, 3), -torch.rand(2, 1),
                          torch.randn(1, 1, 3), torch.randn(1, 1, 3))
    assert real.shape == (1, 2, 3)


def _get_flops_module():
    return load_tool('get_flops')


# One classification, one detection and one segmentation config per family, at the papers'
# input sizes (224x224, 1280x800, 512x2048): (params, FLOPs), as the jit-trace count gave them.
# They agree with the official code's fvcore counts where those are published (0.806G, 4.706G,
# 0.883G; MSVMamba Mask R-CNN 201.3G and UperNet 860.0G) and with LocalVMamba-T's 291G.
EXPECTED = {
    'configs/efficientvmamba/tiny_in1k.py': (6_493_660, 805_678_736),
    'configs/efficientvmamba/tiny_retinanet_coco.py': (15_990_568, 167_562_837_312),
    'configs/efficientvmamba/tiny_ade20k.py': (14_487_488, 229_843_989_440),
    'configs/groupmamba/tiny_in1k.py': (23_361_917, 4_705_845_306),
    'configs/groupmamba/tiny_coco.py': (40_621_496, 266_120_412_176),
    'configs/groupmamba/tiny_ade20k.py': (50_604_020, 941_337_605_600),
    'configs/localmamba/localvim_tiny_in1k.py': (7_994_152, 2_169_913_648),
    'configs/localmamba/localvmamba_tiny_coco.py': (45_033_408, 290_745_114_208),
    'configs/localmamba/localvim_tiny_coco_lsj_100e.py': (30_665_632, 381_628_735_840),
    'configs/localmamba/localvim_tiny_ade20k.py': (36_061_100, 158_181_235_680),
    'configs/msvmamba/nano_in1k.py': (6_864_136, 881_898_460),
    'configs/msvmamba/micro_coco.py': (31_518_192, 201_239_260_592),
    'configs/msvmamba/nano_ade20k.py': (35_730_668, 859_992_508_648),
}
TASKS = {'_in1k': 'mmpretrain', '_coco': 'mmdet', '_ade20k': 'mmseg'}


@pytest.mark.parametrize('config', sorted(EXPECTED))
def test_config_counts(config):
    task = next(task for suffix, task in TASKS.items() if suffix in config)
    if not has_mm_stack(task):
        pytest.skip(f'{task} is not installed')
    row = _get_flops_module().analyse(str(REPO / config))
    assert (row['params'], row['flops']) == EXPECTED[config], row
    committed = {r['config']: r for r in json.loads(
        (REPO / 'docs' / 'complexity.json').read_text())}
    assert (committed[config]['params'], committed[config]['flops']) == EXPECTED[config]
    assert row['seconds'] < 60


def test_localvim_reports_the_paper_formula_too():
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    row = _get_flops_module().analyse(str(REPO / 'configs/localmamba/localvim_tiny_in1k.py'))
    assert abs(row['paper_formula_flops'] / 1.482e9 - 1) < 0.001   # the official flops()


def test_committed_json_covers_every_config():
    rows = json.loads((REPO / 'docs' / 'complexity.json').read_text())
    configs = sorted(str(p.relative_to(REPO)) for p in (REPO / 'configs').glob('*/*.py')
                     if p.parent.name not in ('_base_', 'demo'))
    assert sorted(r['config'] for r in rows) == configs
    sizes = {'mmpretrain': [224, 224], 'mmdet': [800, 1280], 'mmseg': [512, 2048]}
    for row in rows:
        assert row['input'] == sizes[row['task']], row['config']
        assert row['params'] > 1e6 and row['flops'] > 1e8, row['config']
        assert sum(row['by_operator'].values()) == row['flops'], row['config']


def test_model_zoo_is_generated_from_the_committed_json():
    result = run_tool(['tools/make_model_zoo.py', '--check'], check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    text = (REPO / 'docs' / 'model_zoo.md').read_text()
    rows = [line for line in text.splitlines() if line.startswith('| [')]
    assert len(rows) == len(json.loads((REPO / 'docs' / 'complexity.json').read_text()))
    for line in rows:
        ours = [cell.strip() for cell in line.split('|')[1:-1]]
        assert ours[3] != '-' and ours[5] != '-', line


def test_make_model_zoo_marks_differences_and_refuses_gaps(tmp_path):
    rows = json.loads((REPO / 'docs' / 'complexity.json').read_text())
    for row in rows:
        if row['config'] == 'configs/msvmamba/nano_in1k.py':
            row['flops'] = int(0.9e9 * 1.10)     # paper: 0.9G
    (tmp_path / 'changed.json').write_text(json.dumps(rows))
    out = tmp_path / 'zoo.md'
    run_tool(['tools/make_model_zoo.py', '--flops', str(tmp_path / 'changed.json'),
              '--out', str(out)])
    nano = next(line for line in out.read_text().splitlines() if '[nano_in1k.py]' in line)
    assert '0.99G ([+10%](models/msvmamba.md#complexity))' in nano, nano
    (tmp_path / 'short.json').write_text(json.dumps(rows[1:]))
    result = run_tool(['tools/make_model_zoo.py', '--flops', str(tmp_path / 'short.json'),
                       '--out', str(out)], check=False)
    assert result.returncode != 0 and 'no measurement for' in result.stderr


@pytest.mark.slow
def test_config_count_equals_the_jit_trace_count():
    """A whole UperNet config (non-square input): the meta-device count equals mmengine's
    FlopAnalyzer tracing the model with real tensors, the papers' method (20 s of tracing even
    at 32x64; the meta-device count takes 2 s)."""
    if not has_mm_stack('mmseg'):
        pytest.skip('mmseg is not installed')
    from mmengine.analysis import FlopAnalyzer
    from mmengine.config import Config

    from vssm_mm.analysis.build import build_model
    from vssm_mm.ops.selective_scan import SCAN_FLOP_HANDLES
    get_flops = _get_flops_module()
    config = REPO / 'configs/msvmamba/nano_ade20k.py'
    model, _ = build_model(Config.fromfile(str(config)))

    class Tensor(nn.Module):

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, mode='tensor')

    analyzer = FlopAnalyzer(Tensor(), (torch.randn(1, 3, 32, 64), ))
    analyzer.set_op_handle(**SCAN_FLOP_HANDLES, **{'aten::silu': None, 'aten::neg': None,
                                                   'aten::exp': None, 'aten::flip': None})
    analyzer.unsupported_ops_warnings(False)
    analyzer.tracer_warnings('none')
    with torch.no_grad():
        expected = analyzer.total()
    assert get_flops.analyse(str(config), (32, 64))['flops'] == expected
