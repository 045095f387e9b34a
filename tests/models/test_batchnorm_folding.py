"""conv + BatchNorm with the BatchNorm folded in for float32 CPU inference
(vssm_mm/models/layers/batchnorm_folding.py)."""
import torch
from torch import nn

from vssm_mm.models.layers import ConvBN, batchnorm_folding, conv_bn


def _pair(in_ch, out_ch, groups=1, bias=False, affine=True, kernel=3):
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(out_ch, affine=affine)
    gen = torch.Generator().manual_seed(in_ch + out_ch)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(out_ch, generator=gen))
        bn.running_var.copy_(torch.rand(out_ch, generator=gen) + 0.5)
        if affine:
            bn.weight.copy_(torch.randn(out_ch, generator=gen))
            bn.bias.copy_(torch.randn(out_ch, generator=gen))
    return conv, bn.eval()


def test_folded_equals_conv_then_batchnorm():
    x = torch.randn(2, 8, 9, 7)
    for conv, bn in (_pair(8, 8, groups=8, bias=True), _pair(8, 16, kernel=1),
                     _pair(8, 8, groups=8, affine=False)):
        with torch.no_grad():
            folded = conv_bn(conv, bn, x)
            assert conv in batchnorm_folding._FOLDED
            torch.testing.assert_close(folded, bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_cache_follows_parameter_and_statistic_updates():
    conv, bn = _pair(4, 4, kernel=1)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        first = conv_bn(conv, bn, x)
        bn.running_var.mul_(4.0)  # in place: the version counter changes
        conv.weight.add_(1.0)
        second = conv_bn(conv, bn, x)
        torch.testing.assert_close(second, bn(conv(x)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(first, second)
        bn.load_state_dict(_pair(4, 4, kernel=1)[1].state_dict())
        torch.testing.assert_close(conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_training_and_gradients_take_the_two_modules():
    conv, bn = _pair(4, 4)
    x = torch.randn(2, 4, 6, 6)
    bn.train()
    before = bn.running_mean.clone()
    with torch.no_grad():
        conv_bn(conv, bn, x)
    assert not torch.equal(before, bn.running_mean)  # batch statistics were used and tracked
    bn.eval()
    out = conv_bn(conv, bn, x)  # parameters need gradients: the modules run, gradients flow
    out.sum().backward()
    assert conv.weight.grad is not None and bn.weight.grad is not None


def test_convbn_keeps_the_sequential_keys():
    conv, bn = _pair(4, 4)
    module = ConvBN(conv, bn)
    assert list(module.state_dict()) == list(nn.Sequential(conv, bn).state_dict())
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(module(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_modules_made_in_inference_mode():
    """Inference tensors have no version counter: their folds are computed, not cached."""
    x = torch.randn(1, 4, 5, 5)
    with torch.inference_mode():
        conv, bn = _pair(4, 4)
        first = conv_bn(conv, bn, x)
        assert conv not in batchnorm_folding._FOLDED
        bn.running_mean.add_(1.0)  # in place, inside inference mode
        torch.testing.assert_close(conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(first, conv_bn(conv, bn, x))
    with torch.no_grad():
        torch.testing.assert_close(conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-5, atol=1e-5)
