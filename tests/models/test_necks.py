"""SimpleFPN (ViTDet's simple feature pyramid, LocalVim detection)."""
import pytest
import torch

from vssm_mm.models.necks import SimpleFPN


def test_simple_fpn_levels_and_parameters():
    neck = SimpleFPN(backbone_channel=32, in_channels=[8, 16, 32, 32], out_channels=12, num_outs=5)
    outs = neck((torch.randn(2, 32, 6, 10), ))
    assert [tuple(o.shape) for o in outs] == [(2, 12, 24, 40), (2, 12, 12, 20), (2, 12, 6, 10),
                                              (2, 12, 3, 5), (2, 12, 2, 3)]
    # The official module names (ViTDet): two learned upsampling paths, laterals, outputs.
    prefixes = sorted({k.rsplit('.', 1)[0] for k in neck.state_dict()})
    assert prefixes == ['fpn1.0', 'fpn1.1', 'fpn1.3', 'fpn2.0'] + \
        [f'fpn_convs.{i}.{m}' for i in range(4) for m in ('conv', 'norm_layer')] + \
        [f'lateral_convs.{i}.{m}' for i in range(4) for m in ('conv', 'norm_layer')]
    with pytest.raises(ValueError, match=r'in_channels must be \[8, 16, 32, 32\]'):
        SimpleFPN(backbone_channel=32, in_channels=[8, 16, 32, 64], out_channels=12, num_outs=5)
