"""MSVMamba (Multi-Scale VMamba): hierarchy-in-hierarchy visual state-space backbone.

Two generations exist; their checkpoints are not interchangeable (the key map in
``vssm_mm/checkpoint/families/msvmamba.py`` reads both):

* ``v1`` (arXiv paper; ``nano``, ``micro``, ``tiny``) -- :class:`MSVMambaV1Block`:
  channels-last, LayerNorm, patchify stem, patch-merging downsample, ``d_inner = 2C`` with a
  SiLU gate, out-norm per branch before merging, bilinear upsampling, pre-norm ConvFFN.
* ``v2`` (NeurIPS version; ``v2_tiny``, ``v2_small``, ``v2_base``) -- :class:`MSVMambaV2Block`:
  channels-first, LayerNorm2d, two-conv stem, stride-2 conv downsample, ``d_inner = C`` (gate
  only in ``v2_base``), one out-norm after merging, nearest upsampling, post-norm ConvFFN.

Both share :class:`MultiScaleSSM`: a full-resolution branch (depthwise 3x3) scanned in one
direction and a half-resolution branch (depthwise 7x7, stride 2) whose three other directions
are joined into one sequence (the state carries across the three segments).
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.ops.norm_gate import norm_gate_channels
from vssm_mm.ops.scan_orders import multiscale_merge, multiscale_scan
from vssm_mm.registry import MODELS

from ..layers import (ConvDownsample, DropPath, LayerNorm2d, Linear2d, PatchifyStem, PatchMerging,
                      SelectiveSSM, SqueezeExcite, Stage)
from .base import VSSMBackboneMixin


class MultiScaleSSM(nn.Module):
    """Depthwise convs of the two branches, the multi-scale scan and one :class:`SelectiveSSM`.

    Direction 0 of ``ssm`` is the full-resolution sequence, direction 1 the low-resolution one,
    each scanned at its own length (padding the shorter one to a common length would scan 14%
    more tokens, and count them).

    Args:
        channels (int): ``d_inner``.
        d_state (int): SSM state size.
        dt_rank (int): Rank of the delta projection.
    """

    def __init__(self, channels: int, d_state: int, dt_rank: int):
        super().__init__()
        self.conv_full = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.conv_low = nn.Conv2d(channels, channels, 7, stride=2, padding=3, groups=channels)
        self.ssm = SelectiveSSM(2, channels, d_state, dt_rank)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, tuple]:
        """``(B, d, H, W)`` -> (full-res output ``(B, d, H*W)``, low-res output, low size)."""
        x_low = F.silu(self.conv_low(x))
        seq_full, seq_low = multiscale_scan(F.silu(self.conv_full(x)), x_low)
        y_full = self.ssm(seq_full.unsqueeze(1), directions=slice(0, 1))[:, 0]
        y_low = self.ssm(seq_low.unsqueeze(1), directions=slice(1, 2))[:, 0]
        return y_full, y_low, x_low.shape[2:]


def _ssm_args(dim: int, ssm_ratio: float, d_state: int):
    return int(ssm_ratio * dim), d_state, math.ceil(dim / 16)


class ConvFFN(nn.Module):
    """1x1 conv -> (+ depthwise 3x3 residual) -> GELU -> 1x1 conv, on NCHW maps."""

    def __init__(self, channels: int, expansion: int):
        super().__init__()
        hidden = channels * expansion
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(F.gelu(x + self.dwconv(x)))


class MSVMambaV1Mixer(nn.Module):
    """v1 multi-scale mixer on channels-last maps (gated, out-norm per branch, bilinear)."""

    def __init__(self, dim: int, ssm_ratio: float, d_state: int):
        super().__init__()
        d_inner, d_state, dt_rank = _ssm_args(dim, ssm_ratio, d_state)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.scan = MultiScaleSSM(d_inner, d_state, dt_rank)
        self.out_norm = nn.LayerNorm(d_inner)
        self.channel_attn = SqueezeExcite(d_inner, d_inner // 8, bias=False)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two products with the halves of in_proj's weight: x and z come out contiguous (the
        # two depthwise convs copied a strided chunk of one product first).
        x, z = (F.linear(x, w) for w in self.in_proj.weight.chunk(2, dim=0))
        size = x.shape[1:3]
        y_full, y_low, low_size = self.scan(x.permute(0, 3, 1, 2))
        # out_norm over the channels of the channels-first sequences (one compiled pass in
        # float32 CPU inference; torch's norm on the transposed view otherwise).
        y_full = norm_gate_channels(y_full, self.out_norm)
        y_low = norm_gate_channels(y_low, self.out_norm)
        map_full, map_low = multiscale_merge(y_full, y_low, tuple(size), tuple(low_size))
        y = map_full + F.interpolate(map_low, size=tuple(size), mode='bilinear',
                                     align_corners=False)
        y = self.channel_attn(y.to(x.dtype)).permute(0, 2, 3, 1)
        return self.out_proj(y * F.silu(z))


class MSVMambaV2Mixer(nn.Module):
    """v2 multi-scale mixer on NCHW maps (optional gate, one out-norm after merging, nearest)."""

    def __init__(self, dim: int, ssm_ratio: float, d_state: int, gate: bool):
        super().__init__()
        d_inner, d_state, dt_rank = _ssm_args(dim, ssm_ratio, d_state)
        self.gate = gate
        self.in_proj = Linear2d(dim, d_inner * (2 if gate else 1), bias=False)
        self.scan = MultiScaleSSM(d_inner, d_state, dt_rank)
        self.out_norm = LayerNorm2d(d_inner)
        self.channel_attn = SqueezeExcite(d_inner, d_inner // 8, bias=False)
        self.out_proj = Linear2d(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=1)
        size = tuple(x.shape[2:])
        y_full, y_low, low_size = self.scan(x)
        map_full, map_low = multiscale_merge(y_full, y_low, size, tuple(low_size))
        y = self.out_norm(map_full + F.interpolate(map_low, size=size, mode='nearest'))
        y = self.channel_attn(y.to(x.dtype))
        return self.out_proj(y * F.silu(z) if self.gate else y)


class MSVMambaV1Block(nn.Module):
    """Channels-last: ``x + DropPath(mixer(norm1 x))``, then ``x + DropPath(ffn(norm2 x))``."""

    def __init__(self, dim: int, ssm_ratio: float, d_state: int, ffn_ratio: int,
                 drop_path: float = 0.0, gate: bool = True):
        super().__init__()
        if not gate:
            raise ValueError('MSVMamba v1 blocks are always gated; gate=False needs v2')
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = MSVMambaV1Mixer(dim, ssm_ratio, d_state)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = ConvFFN(dim, ffn_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        ffn = self.ffn(self.norm2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(ffn)


class MSVMambaV2Block(nn.Module):
    """Channels-first: ``x + DropPath(mixer(norm1 x))``, then ``x + DropPath(norm2(ffn x))``."""

    def __init__(self, dim: int, ssm_ratio: float, d_state: int, ffn_ratio: int,
                 drop_path: float = 0.0, gate: bool = False):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.mixer = MSVMambaV2Mixer(dim, ssm_ratio, d_state, gate)
        self.ffn = ConvFFN(dim, ffn_ratio)
        self.norm2 = LayerNorm2d(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.norm2(self.ffn(x)))


class ConvStem(nn.Module):
    """v2 stem: two 3x3 stride-2 convs with LayerNorm2d (GELU between); NCHW, stride 4."""

    def __init__(self, out_channels: int):
        super().__init__()
        hidden = out_channels // 2
        self.conv1 = nn.Conv2d(3, hidden, 3, 2, 1)
        self.norm1 = LayerNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, 2, 1)
        self.norm2 = LayerNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x)))))


GENERATIONS = {
    # block, stem, downsample, out norm, channels-first
    'v1': (MSVMambaV1Block, PatchifyStem, PatchMerging, nn.LayerNorm, False),
    'v2': (MSVMambaV2Block, ConvStem, ConvDownsample, LayerNorm2d, True),
}


@MODELS.register_module()
class MSVMamba(VSSMBackboneMixin, BaseModule):
    """MSVMamba backbone (arXiv 2405.14174, NeurIPS 2024).

    Args:
        arch (str | dict): A name from :attr:`arch_zoo` (``'nano'``, ``'micro'``, ``'tiny'``,
            ``'v2_tiny'``, ``'v2_small'``, ``'v2_base'``) or a dict with the keys
            ``generation, dims, depths, d_state, ssm_ratio, gate, ffn_ratio, drop_path_rate``.
        out_indices (Sequence[int] | int): Stages whose (normed) outputs are returned, NCHW.
            Defaults to ``(3,)``, the input of the classification head.
        frozen_stages (int): Freeze the stem and the first ``frozen_stages`` stages (and their
            output norms); -1 freezes nothing.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training (no effect on the
            LayerNorm-only MSVMamba; kept for config uniformity).
        drop_path_rate (float, optional): Stochastic depth; defaults to the arch's value.
        with_cp (bool): Activation checkpointing per block (saves memory, costs time).
        init_cfg (dict | list[dict], optional): mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')``.
    """

    arch_zoo: Dict[str, dict] = {
        'nano': dict(generation='v1', dims=(48, 96, 192, 384), depths=(1, 2, 5, 2), d_state=1,
                     ssm_ratio=2.0, gate=True, ffn_ratio=2, drop_path_rate=0.2),
        'micro': dict(generation='v1', dims=(64, 128, 256, 512), depths=(1, 2, 5, 2), d_state=1,
                      ssm_ratio=2.0, gate=True, ffn_ratio=2, drop_path_rate=0.2),
        'tiny': dict(generation='v1', dims=(96, 192, 384, 768), depths=(1, 2, 9, 2), d_state=1,
                     ssm_ratio=2.0, gate=True, ffn_ratio=2, drop_path_rate=0.2),
        'v2_tiny': dict(generation='v2', dims=(96, 192, 384, 768), depths=(2, 2, 9, 2),
                        d_state=1, ssm_ratio=1.0, gate=False, ffn_ratio=4, drop_path_rate=0.2),
        'v2_small': dict(generation='v2', dims=(96, 192, 384, 768), depths=(2, 3, 20, 2),
                         d_state=1, ssm_ratio=1.0, gate=False, ffn_ratio=4, drop_path_rate=0.4),
        'v2_base': dict(generation='v2', dims=(128, 256, 512, 1024), depths=(2, 4, 18, 2),
                        d_state=1, ssm_ratio=1.0, gate=True, ffn_ratio=4, drop_path_rate=0.5),
    }
    arch_aliases = {'n': 'nano', 'm': 'micro', 't': 'tiny', 'v2_t': 'v2_tiny',
                    'v2_s': 'v2_small', 'v2_b': 'v2_base'}

    def __init__(self, arch: Union[str, dict] = 'tiny',
                 out_indices: Union[Sequence[int], int] = (3, ), frozen_stages: int = -1,
                 norm_eval: bool = False, drop_path_rate: Optional[float] = None,
                 with_cp: bool = False, init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = self.init_arch(arch, required=('generation', 'dims', 'depths', 'd_state',
                                                  'ssm_ratio', 'gate', 'ffn_ratio'))
        generation = settings['generation']
        if generation not in GENERATIONS:
            raise ValueError(f"arch generation must be 'v1' or 'v2', got {generation!r}")
        block, stem, downsample, norm, channels_first = GENERATIONS[generation]
        self.generation, self.channels_first = generation, channels_first
        dims, depths = tuple(settings['dims']), tuple(settings['depths'])
        self.dims, self.depths = dims, depths
        self.init_outputs(len(depths), out_indices, frozen_stages, norm_eval)
        if drop_path_rate is None:
            drop_path_rate = settings.get('drop_path_rate', 0.0)

        self.stem = stem(dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList(
            Stage([block(dim, settings['ssm_ratio'], settings['d_state'], settings['ffn_ratio'],
                         rates[sum(depths[:i]) + j], gate=settings['gate'])
                   for j in range(depth)],
                  downsample(dim, dims[i + 1]) if i < self.num_stages - 1 else None, with_cp)
            for i, (dim, depth) in enumerate(zip(dims, depths)))
        self.build_out_norms(norm, dims)
        self._freeze_stages()

    def forward(self, x: torch.Tensor):
        self.check_input(x, min_size=32 if self.channels_first else 16)
        return self.forward_stages(self.stem(x), channels_first=self.channels_first)
