"""selective_scan refuses bad input with an error that says what is wrong, before any kernel."""
import pytest
import torch

from vssm_mm.ops.selective_scan import selective_scan


def _inputs(batch=2, channels=4, length=5, n=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, channels, length, generator=g, dtype=dtype)
    delta = torch.rand(batch, channels, length, generator=g, dtype=dtype)
    A = -torch.rand(channels, n, generator=g)
    B = torch.randn(batch, n, length, generator=g, dtype=dtype)
    C = torch.randn(batch, n, length, generator=g, dtype=dtype)
    return u, delta, A, B, C


@pytest.mark.parametrize('empty', ['batch', 'channels', 'L'])
def test_empty_inputs_are_refused_clearly(empty):
    sizes = dict(batch=2, channels=4, length=5)
    sizes[{'batch': 'batch', 'channels': 'channels', 'L': 'length'}[empty]] = 0
    with pytest.raises(ValueError, match='non-empty input'):
        selective_scan(*_inputs(**sizes), backend='reference')


def test_zero_state_size_is_refused():
    u, delta, _, _, _ = _inputs()
    with pytest.raises(ValueError, match='N >= 1'):
        selective_scan(u, delta, torch.zeros(4, 0), torch.zeros(2, 0, 5), torch.zeros(2, 0, 5),
                       backend='reference')


@pytest.mark.parametrize('name', ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias'])
@pytest.mark.parametrize('dtype', [torch.int64, torch.bool])
def test_integer_and_bool_tensors_are_refused(name, dtype):
    u, delta, A, B, C = _inputs()
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=torch.ones(4), z=torch.ones_like(u),
                delta_bias=torch.zeros(4))
    args[name] = args[name].to(dtype)
    with pytest.raises(TypeError, match=f'{name} must be a floating-point tensor'):
        selective_scan(**args, backend='reference')


def test_non_tensor_is_refused():
    u, delta, A, B, C = _inputs()
    with pytest.raises(TypeError, match='D must be a tensor'):
        selective_scan(u, delta, A, B, C, D=[1.0] * 4, backend='reference')
