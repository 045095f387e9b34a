"""What every backbone shares: the SSM module, the Stage, argument checks, float64."""
import pytest
import torch
from torch import nn

from vssm_mm.models.backbones import EfficientVMamba, GroupMamba, LocalVim, LocalVMamba, MSVMamba
from vssm_mm.models.layers import SelectiveSSM, Stage

# Small settings of each family (one or two blocks per stage), built in float64.
SMALL = {
    'MSVMamba-v1': (MSVMamba, dict(MSVMamba.arch_zoo['nano'], dims=(16, 32, 64, 128),
                                   depths=(1, 1, 1, 1))),
    'MSVMamba-v2': (MSVMamba, dict(MSVMamba.arch_zoo['v2_base'], dims=(16, 32, 64, 128),
                                   depths=(1, 1, 1, 1))),
    'EfficientVMamba': (EfficientVMamba, dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))),
    'LocalVim': (LocalVim, dict(embed_dim=32, depth=4,
                                directions=[('h', 'v_flip', 'w2', 'w7')] * 4)),
    'LocalVMamba': (LocalVMamba, dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1),
                                      directions=[('h', 'v', 'w2', 'w7_flip')] * 4)),
    'GroupMamba': (GroupMamba, dict(stem_hidden_dim=16, embed_dims=(16, 32, 64, 96),
                                    depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))),
}


def _build(name, **kwargs):
    cls, arch = SMALL[name]
    return cls(arch, **kwargs)


@pytest.mark.parametrize('name', list(SMALL))
def test_float64_forward_and_backward(name):
    """model.double() runs: the SSM computes in float64 for float64 inputs."""
    torch.manual_seed(0)
    model = _build(name, out_indices=(0, 1, 2, 3), drop_path_rate=0.0).double()
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64, requires_grad=True)
    outs = model(x)
    assert len(outs) == 4 and all(o.dtype == torch.float64 for o in outs)
    sum((o * o).mean() for o in outs).backward()
    assert x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()
    ssms = [m for m in model.modules() if isinstance(m, SelectiveSSM)]
    assert ssms and all(m.A_log.grad.dtype == torch.float64 for m in ssms)


def test_selective_ssm_dtype_policy():
    ssm = SelectiveSSM(2, 8, 4, 2)
    xs = torch.randn(1, 2, 8, 5)
    assert ssm(xs).dtype == torch.float32
    assert ssm(xs.half()).dtype == torch.float32
    assert ssm.double()(xs.double()).dtype == torch.float64
    with pytest.raises(ValueError, match=r'\(B, 2, 8, L\)'):
        ssm(torch.randn(1, 3, 8, 5, dtype=torch.float64))


def test_selective_ssm_counts_with_einsums_and_runs_with_matmuls(monkeypatch):
    """FLOP counters (jit trace, meta device) see the projections as the papers' einsums; the
    eager path uses broadcast matmuls. Both compute the same values and gradients."""
    from vssm_mm.models.layers import ssm as ssm_module
    torch.manual_seed(0)
    module = SelectiveSSM(3, 8, 4, 2).double()
    xs = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    results = {}
    for counting in (False, True):
        monkeypatch.setattr(ssm_module, '_counting', lambda x, value=counting: value)
        x = xs.clone().requires_grad_()
        out = module(x)
        results[counting] = (out, torch.autograd.grad(out.sum(), [x, module.x_proj_weight]))
    torch.testing.assert_close(results[False], results[True])
    monkeypatch.undo()
    assert ssm_module._counting(xs.to('meta')) and not ssm_module._counting(xs)
    from vssm_mm.ops.selective_scan.flops import scan_as_library_op
    ops = set()
    with scan_as_library_op(), _RecordOps(ops):  # how the FLOP counter runs a model
        module.to('meta')(xs.to('meta'))
    assert 'einsum' in ops and 'matmul' not in ops


class _RecordOps(torch.overrides.TorchFunctionMode):
    def __init__(self, names):
        super().__init__()
        self.names = names

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, '__name__', str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('name', list(SMALL))
def test_one_ssm_module_owns_the_stacked_parameters(name):
    """Every SSM parameter lives in a SelectiveSSM; no family keeps per-direction copies."""
    model = _build(name)
    owned = {id(p) for m in model.modules() if isinstance(m, SelectiveSSM)
             for p in m.parameters()}
    names = [n for n, p in model.named_parameters()
             if any(t in n.rsplit('.', 1)[-1] for t in ('A_log', 'x_proj', 'dt_proj'))
             or n.endswith('.D')]
    assert names and all(id(dict(model.named_parameters())[n]) in owned for n in names)
    assert not any(isinstance(m, nn.Identity) for m in model.modules())


@pytest.mark.parametrize('name', [n for n in SMALL if n != 'LocalVim'])
def test_hierarchical_families_use_the_one_stage(name):
    model = _build(name)
    assert len(model.stages) == 4 and all(type(s) is Stage for s in model.stages)


@pytest.mark.parametrize('name', list(SMALL))
@pytest.mark.parametrize('value,error', [('3', TypeError), (3.0, TypeError), ((1, '2'), TypeError),
                                         ([1.5], TypeError), (True, TypeError)])
def test_out_indices_of_the_wrong_type_say_what_is_accepted(name, value, error):
    with pytest.raises(error, match='out_indices must be an int or a list/tuple of ints'):
        _build(name, out_indices=value)


@pytest.mark.parametrize('name', list(SMALL))
@pytest.mark.parametrize('value,error', [('1', TypeError), (1.0, TypeError), (None, TypeError),
                                         (-2, ValueError), (5, ValueError)])
def test_frozen_stages_out_of_range_or_type_say_what_is_accepted(name, value, error):
    with pytest.raises(error, match=r'frozen_stages must be an int: -1 \(freeze nothing\)'):
        _build(name, frozen_stages=value)


@pytest.mark.parametrize('name', list(SMALL))
def test_stage_count_arguments_still_accept_ints(name):
    model = _build(name, out_indices=[0, -1], frozen_stages=0)
    assert model.out_indices == (0, 3) and model.frozen_stages == 0
