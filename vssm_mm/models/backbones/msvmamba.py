"""MSVMamba (Multi-Scale VMamba): hierarchy-in-hierarchy visual state-space backbone.

Two generations of the official code exist and their checkpoints are not interchangeable:

* ``v1`` (arXiv paper; variants ``nano``, ``micro``, ``tiny``): channels-last, LayerNorm,
  4x4 patchify stem, patch-merging downsample, ``d_inner = 2C`` with a SiLU gate, out-norm per
  branch before merging, bilinear upsampling of the low-resolution branch, pre-norm ConvFFN.
* ``v2`` (NeurIPS version; ``v2_tiny``, ``v2_small``, ``v2_base``): channels-first, LayerNorm2d,
  two-conv stem, 3x3 stride-2 conv downsample, ``d_inner = C`` (gate only in ``v2_base``), one
  out-norm after merging, nearest upsampling, post-norm ConvFFN.

The MS2D mixer of both: a full-resolution branch (depthwise 3x3) scanned in one direction and
a half-resolution branch (depthwise 7x7, stride 2) whose three other directions are joined into
one sequence scanned by one SSM (the state carries across the three segments).
"""
import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.ops.scan_orders import multiscale_merge, multiscale_scan
from vssm_mm.registry import MODELS

from ..layers import DropPath, LayerNorm2d, Linear2d, Permute
from ..layers.ssm import init_ssm_params, scan_directions
from .base import VSSMBackboneMixin


class SqueezeExcite(nn.Module):
    """Channel attention on the SSM output (keys ``fc.0``, ``fc.2``), channels-last or -first."""

    def __init__(self, channels: int, reduction: int = 8, channels_first: bool = False):
        super().__init__()
        self.channels_first = channels_first
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            scale = self.fc(x.mean(dim=(2, 3)))
            return x * scale[:, :, None, None]
        scale = self.fc(x.mean(dim=(1, 2)))
        return x * scale[:, None, None, :]


class ConvFFN(nn.Module):
    """1x1 conv -> (+ depthwise 3x3 residual) -> GELU -> 1x1 conv, on NCHW maps."""

    def __init__(self, channels: int, expansion: int, drop: float = 0.0):
        super().__init__()
        hidden = channels * expansion
        self.linear1 = nn.Conv2d(channels, hidden, 1)
        self.dwc = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.linear2 = nn.Conv2d(hidden, channels, 1)
        self.drop = nn.Dropout(drop)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.linear1(x))
        x = self.act(x + self.dwc(x))
        return self.drop(self.linear2(x))


class MS2D(nn.Module):
    """Multi-scale 2D selective-scan mixer.

    Args:
        dim (int): Block width ``C``.
        generation (str): ``'v1'`` (channels-last) or ``'v2'`` (channels-first).
        ssm_ratio (float): ``d_inner / C``.
        d_state (int): SSM state size ``N``.
        gate (bool): Multiply by ``SiLU(z)`` from a second half of ``in_proj``.
        add_se (bool): Squeeze-excitation on the SSM output.
    """

    def __init__(self, dim: int, generation: str = 'v1', ssm_ratio: float = 2.0,
                 d_state: int = 1, gate: bool = True, add_se: bool = True):
        super().__init__()
        self.generation = generation
        self.channels_first = generation == 'v2'
        self.gate = gate
        d_inner = int(ssm_ratio * dim)
        self.d_inner = d_inner
        dt_rank = math.ceil(dim / 16)
        linear = Linear2d if self.channels_first else nn.Linear
        self.in_proj = linear(dim, d_inner * (2 if gate else 1), bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        self.conv2d_b1 = nn.Conv2d(d_inner, d_inner, 7, stride=2, padding=3, groups=d_inner)
        # Parameter group of each branch: v1 stores the low-res branch first, v2 the full-res.
        self.group_full, self.group_low = (0, 1) if self.channels_first else (1, 0)
        init_ssm_params(self, num_groups=2, d_inner=d_inner, d_state=d_state, dt_rank=dt_rank)
        self.out_norm = (LayerNorm2d if self.channels_first else nn.LayerNorm)(d_inner)
        self.se = SqueezeExcite(d_inner, 8, self.channels_first) if add_se else nn.Identity()
        self.out_proj = linear(d_inner, dim, bias=False)

    def _group(self, k: int):
        d = self.d_inner
        return (self.x_proj_weight[k:k + 1], self.dt_projs_weight[k:k + 1],
                self.dt_projs_bias[k:k + 1], self.A_logs[k * d:(k + 1) * d],
                self.Ds[k * d:(k + 1) * d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        channel_dim = 1 if self.channels_first else -1
        if self.gate:
            x, z = x.chunk(2, dim=channel_dim)
            z = F.silu(z)
        if not self.channels_first:
            x = x.permute(0, 3, 1, 2)
        height, width = x.shape[2:]
        x_full = F.silu(self.conv2d(x))
        x_low = F.silu(self.conv2d_b1(x))
        low_size = tuple(x_low.shape[2:])
        seq_full, seq_low = multiscale_scan(x_full, x_low)
        # v1 runs the scan in fp32 (its autograd Function casts); v2 keeps the AMP dtype
        # and asks for an fp32 output.
        force_fp32 = not self.channels_first
        y_full = scan_directions(seq_full[:, None], *self._group(self.group_full),
                                 force_fp32=force_fp32)[:, 0]
        y_low = scan_directions(seq_low[:, None], *self._group(self.group_low),
                                force_fp32=force_fp32)[:, 0]
        if not self.channels_first:
            # v1 normalises each branch's sequence before merging.
            y_full = self.out_norm(y_full.transpose(1, 2)).transpose(1, 2)
            y_low = self.out_norm(y_low.transpose(1, 2)).transpose(1, 2)
        map_full, map_low = multiscale_merge(y_full, y_low, (height, width), low_size)
        if self.channels_first:
            y = map_full + F.interpolate(map_low, size=(height, width), mode='nearest')
            y = self.out_norm(y)
        else:
            y = map_full + F.interpolate(map_low, size=(height, width), mode='bilinear',
                                         align_corners=False)
            y = y.permute(0, 2, 3, 1)
        y = self.se(y.to(x.dtype))
        if self.gate:
            y = y * z
        return self.out_proj(y)


class MSVSSBlock(nn.Module):
    """Residual block: ``x + DropPath(MS2D(norm(x)))`` then the ConvFFN residual."""

    def __init__(self, dim: int, generation: str, ssm_ratio: float, d_state: int, gate: bool,
                 ffn_ratio: int, drop_path: float = 0.0, with_cp: bool = False):
        super().__init__()
        self.generation = generation
        self.with_cp = with_cp
        norm = LayerNorm2d if generation == 'v2' else nn.LayerNorm
        self.norm = norm(dim)
        self.op = MS2D(dim, generation, ssm_ratio, d_state, gate)
        self.drop_path = DropPath(drop_path)
        self.convFFN = ConvFFN(dim, ffn_ratio)
        self.norm2 = norm(dim)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.generation == 'v2':
            # v2 (channels-first) puts the ConvFFN's norm after it.
            return x + self.drop_path(self.norm2(self.convFFN(x)))
        ffn = self.convFFN(self.norm2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class PatchMerging2D(nn.Module):
    """2x2 neighbourhood -> LayerNorm(4C) -> Linear(4C, 2C), channels-last; pads odd sizes."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x))


class MSVMambaStage(nn.Module):
    """``blocks`` then ``downsample`` (the input of the next stage), as in the checkpoints."""

    def __init__(self, blocks: nn.Module, downsample: nn.Module):
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample


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

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 out_indices: Union[Sequence[int], int] = (3, ),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_path_rate: Optional[float] = None,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = self.parse_arch(arch, required=('generation', 'dims', 'depths', 'd_state',
                                                   'ssm_ratio', 'gate', 'ffn_ratio'))
        self.arch_name = self.arch_aliases.get(arch.lower(), arch.lower()) \
            if isinstance(arch, str) else 'custom'
        generation = settings['generation']
        if generation not in ('v1', 'v2'):
            raise ValueError(f"arch generation must be 'v1' or 'v2', got {generation!r}")
        self.generation = generation
        dims, depths = tuple(settings['dims']), tuple(settings['depths'])
        self.dims, self.depths = dims, depths
        self.num_stages = len(depths)
        if drop_path_rate is None:
            drop_path_rate = settings.get('drop_path_rate', 0.0)
        self.out_indices = self.parse_out_indices(out_indices, self.num_stages)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        channels_first = generation == 'v2'
        self.channels_first = channels_first

        if channels_first:
            half = dims[0] // 2
            self.patch_embed = nn.Sequential(
                nn.Conv2d(3, half, 3, 2, 1), nn.Identity(), LayerNorm2d(half), nn.Identity(),
                nn.GELU(), nn.Conv2d(half, dims[0], 3, 2, 1), nn.Identity(), LayerNorm2d(dims[0]))
        else:
            self.patch_embed = nn.Sequential(
                nn.Conv2d(3, dims[0], 4, 4), Permute(0, 2, 3, 1), nn.LayerNorm(dims[0]))

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            blocks = nn.Sequential(*[
                MSVSSBlock(dim, generation, settings['ssm_ratio'], settings['d_state'],
                           settings['gate'], settings['ffn_ratio'],
                           rates[sum(depths[:i]) + j], with_cp) for j in range(depth)
            ])
            if i == self.num_stages - 1:
                downsample = nn.Identity()
            elif channels_first:
                downsample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dims[i + 1], 3, 2, 1),
                                           nn.Identity(), LayerNorm2d(dims[i + 1]))
            else:
                downsample = PatchMerging2D(dim, dims[i + 1])
            self.layers.append(MSVMambaStage(blocks, downsample))

        norm = LayerNorm2d if channels_first else nn.LayerNorm
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', norm(dims[i]))
        self._freeze_stages()

    def forward(self, x: torch.Tensor):
        self.check_input(x, min_size=32 if self.channels_first else 16)
        return self.forward_stages(self.patch_embed(x), 'blocks', self.channels_first)

    def stem_and_stages(self):
        return self.patch_embed, [stage for stage in self.layers]
