"""EfficientVMamba: atrous (skip-sampled) selective scan for lightweight visual Mamba.

Stages 1-2 are EVSS blocks: a global branch, the ES2D mixer, which splits the map into its four
stride-2 sub-grids and scans each one once (L' = ceil(H/2) * ceil(W/2) tokens per direction), and
a local depthwise-conv branch. One shared channel attention (``se``) re-weights each branch and
the two are summed. Stages 3-4 are MobileNetV2 inverted residuals with squeeze-excitation.
Tensors run channels-last between blocks; the inverted residuals work in NCHW inside.
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.ops.conv_scan import conv_silu_scan
from vssm_mm.ops.norm_gate import cpu_inference, norm_gate_channels
from vssm_mm.ops.scan_orders import ATROUS_DIRECTIONS, atrous_merge, get_scan_order
from vssm_mm.registry import MODELS

from ..layers import (ConvBN, DropPath, PatchifyStem, PatchMerging, SelectiveSSM, SqueezeExcite,
                      Stage, TokenChannelAttention, conv_bn)
from .base import VSSMBackboneMixin


class AtrousSSMMixer(nn.Module):
    """Efficient 2D selective scan (ES2D): four skip-sampled directions, no sum over directions.

    ``in_proj`` -> (x, z); x -> depthwise 3x3 + SiLU -> atrous split -> one SSM direction per
    sub-grid -> scatter back -> LayerNorm; the result is gated by SiLU(z) and projected back.

    Args:
        dim (int): Block width ``C``.
        ssm_ratio (float): ``d_inner / C``.
        d_state (int): SSM state size ``N``.
    """

    num_directions = 4

    def __init__(self, dim: int, ssm_ratio: float = 2.0, d_state: int = 16):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        self.ssm = SelectiveSSM(self.num_directions, d_inner, d_state, -(-dim // 16))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        # Two products with the halves of in_proj's weight: x and z come out contiguous (the
        # chunks of one product are strided, which the conv copied and silu(z) read slowly).
        x, z = (F.linear(x, w) for w in self.in_proj.weight.chunk(2, dim=0))
        # silu(conv(x)) split into the four sub-grid sequences: in float32 CPU inference one
        # compiled pass that computes each token where it is gathered; elsewhere the torch ops.
        xs = conv_silu_scan(x, self.conv, get_scan_order(ATROUS_DIRECTIONS, height, width))
        y = atrous_merge(self.ssm(xs), (height, width)).flatten(2)  # (B, d, H*W)
        # out_norm over the channels, times silu(z): in float32 CPU inference one compiled pass
        # over the channels-first map (reading z in transposed blocks) where a channel-last copy,
        # the norm, the SiLU and the product take a pass each (stage 1 is bound by memory
        # traffic on a CPU); elsewhere those torch ops. out_proj reads the result transposed
        # and writes channel-last.
        y = norm_gate_channels(y, self.out_norm, z.view(batch, height * width, -1).transpose(1, 2))
        out = torch.bmm(y.transpose(1, 2), self.out_proj.weight.t().expand(batch, -1, -1))
        return out.view(batch, height, width, -1)


class LocalConvBranch(nn.Module):
    """Depthwise 3x3 -> BatchNorm -> GELU -> pointwise 1x1, channels-last in and out."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.pwconv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (in float32 CPU inference the BatchNorm is folded into the depthwise conv)
        x = conv_bn(self.dwconv, self.norm, x.permute(0, 3, 1, 2))
        if cpu_inference(x, *self.parameters()) and not self.training:
            x = torch.ops.aten.gelu_(x)  # in place on the conv's fresh map (no gradient here)
        else:
            x = F.gelu(x)
        return self.pwconv(x).permute(0, 2, 3, 1)


class EVSSBlock(nn.Module):
    """``x + DropPath(attn(mixer(norm x)) + attn(local(norm x)))``, channels-last.

    One channel attention re-weights both branches. There is no MLP: the released models were
    trained with ``mlp_ratio=0``.
    """

    def __init__(self, dim: int, ssm_ratio: float, d_state: int, attn_ratio: float,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = AtrousSSMMixer(dim, ssm_ratio, d_state)
        self.local = LocalConvBranch(dim)
        self.channel_attn = TokenChannelAttention(dim, attn_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        mixed, local = self.mixer(h), self.local(h)
        if cpu_inference(x, *self.parameters()) and not self.training:
            # Inference (DropPath is the identity): two multiply-adds where the two scalings,
            # their sum and the residual take four passes over the map.
            out = torch.addcmul(x, mixed, self.channel_attn.gate(mixed))
            return out.addcmul_(local, self.channel_attn.gate(local))
        return x + self.drop_path(self.channel_attn(mixed) + self.channel_attn(local))


def _conv_bn(in_channels: int, out_channels: int, groups: int = 1) -> ConvBN:
    kernel = 1 if groups == 1 else 3
    return ConvBN(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups,
                  bias=False), nn.BatchNorm2d(out_channels))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> depthwise 3x3 -> SE -> 1x1 project (+ x).

    Channels-last in and out like the rest of the network; NCHW inside.
    """

    def __init__(self, dim: int, expand_ratio: int, se_ratio: float, drop_path: float = 0.0):
        super().__init__()
        hidden = dim * expand_ratio
        self.expand = _conv_bn(dim, hidden)
        self.depthwise = _conv_bn(hidden, hidden, groups=hidden)
        self.channel_attn = SqueezeExcite(hidden, max(1, int(hidden * se_ratio)))
        self.project = _conv_bn(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_inference(x, *self.parameters()) and not self.training:
            # Inference (DropPath is the identity): the activations, the channel attention's
            # scaling and the residual work in place on the maps the block has just made,
            # instead of writing a new map each.
            y = self.depthwise(self.expand(x.permute(0, 3, 1, 2)).relu_()).relu_()
            y = self.project(self.channel_attn(y, inplace=True))
            return y.permute(0, 2, 3, 1).add_(x)
        y = F.relu(self.expand(x.permute(0, 3, 1, 2)))
        y = self.project(self.channel_attn(F.relu(self.depthwise(y))))
        return x + self.drop_path(y.permute(0, 2, 3, 1))


@MODELS.register_module()
class EfficientVMamba(VSSMBackboneMixin, BaseModule):
    """EfficientVMamba backbone (arXiv 2403.09977, AAAI 2025).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'`` or ``'base'`` (aliases ``'t'``, ``'s'``,
            ``'b'``), the released checkpoints, or a dict with at least ``dims`` and ``depths``
            (optional: ``evss_stages``, ``d_state``, ``ssm_ratio``, ``attn_ratio``,
            ``expand_ratio``, ``se_ratio``, ``drop_path_rate``; defaults as released).
        out_indices (Sequence[int] | int): Stages whose outputs (taken before the stage's
            downsampling and passed through ``out_norms[str(i)]``) are returned, NCHW. Defaults to
            ``(3,)``, the input of the classification head.
        frozen_stages (int): Freeze the stem and the first ``frozen_stages`` stages (and their
            output norms); -1 freezes nothing.
        norm_eval (bool): Keep the BatchNorm layers (conv branches, inverted residuals) in eval
            mode while training.
        drop_path_rate (float, optional): Stochastic depth over all blocks, linearly increasing;
            defaults to the arch's value (0.1, what the released classifiers used).
        with_cp (bool): Activation checkpointing per block (saves memory, costs time).
        init_cfg (dict | list[dict], optional): mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')``.
    """

    # The released widths: small is 64 wide although the paper table and the small yaml say 96.
    arch_zoo: Dict[str, dict] = {
        'tiny': dict(dims=(48, 96, 192, 384), depths=(2, 2, 4, 2)),
        'small': dict(dims=(64, 128, 256, 512), depths=(2, 2, 4, 2)),
        'base': dict(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2)),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 'b': 'base'}
    arch_defaults = dict(evss_stages=2, d_state=16, ssm_ratio=2.0, attn_ratio=0.125,
                         expand_ratio=4, se_ratio=0.125, drop_path_rate=0.1)

    def __init__(self, arch: Union[str, dict] = 'tiny',
                 out_indices: Union[Sequence[int], int] = (3, ), frozen_stages: int = -1,
                 norm_eval: bool = False, drop_path_rate: Optional[float] = None,
                 with_cp: bool = False, init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = self.init_arch(arch, ('dims', 'depths'), self.arch_defaults)
        dims, depths = tuple(settings['dims']), tuple(settings['depths'])
        if len(dims) != len(depths):
            raise ValueError(f'arch dims {dims} and depths {depths} must have the same length')
        evss_stages = settings['evss_stages']
        if not 0 <= evss_stages <= len(depths):
            raise ValueError(f'evss_stages={evss_stages} must be between 0 and {len(depths)}')
        self.dims, self.depths = dims, depths
        self.init_outputs(len(depths), out_indices, frozen_stages, norm_eval)
        if drop_path_rate is None:
            drop_path_rate = settings['drop_path_rate']

        self.stem = PatchifyStem(dims[0])
        # On the CPU even when the model is built on the meta device (to count parameters).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, dim in enumerate(dims):
            stage_rates = rates[sum(depths[:i]):sum(depths[:i + 1])]
            if i < evss_stages:
                blocks = [EVSSBlock(dim, settings['ssm_ratio'], settings['d_state'],
                                    settings['attn_ratio'], rate) for rate in stage_rates]
            else:
                blocks = [InvertedResidual(dim, settings['expand_ratio'], settings['se_ratio'],
                                           rate) for rate in stage_rates]
            downsample = PatchMerging(dim, dims[i + 1]) if i < self.num_stages - 1 else None
            self.stages.append(Stage(blocks, downsample, with_cp))
        self.build_out_norms(nn.LayerNorm, dims)
        self._freeze_stages()

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        return self.forward_stages(self.stem(x))
