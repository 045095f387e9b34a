"""EfficientVMamba: atrous (skip-sampled) selective scan for lightweight visual Mamba.

Stages 1-2 are EVSS blocks: a global branch, the ES2D mixer, which splits the map into its four
stride-2 sub-grids and scans each one once (L' = ceil(H/2) * ceil(W/2) tokens per direction), and
a local depthwise-conv branch. One shared channel attention (``se``) re-weights each branch and
the two are summed. Stages 3-4 are MobileNetV2 inverted residuals with squeeze-excitation.
Tensors run channels-last except inside the inverted-residual stages, as in the checkpoints,
whose module names this file keeps (including the numeric indices of ``layers.2`` / ``layers.3``).
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.ops.scan_orders import atrous_merge, atrous_scan
from vssm_mm.registry import MODELS

from ..layers import DropPath, Permute
from ..layers.ssm import init_ssm_params, scan_directions
from .base import VSSMBackboneMixin
from .msvmamba import PatchMerging2D


class ES2D(nn.Module):
    """Efficient 2D selective scan: four skip-sampled directions, no sum over directions.

    ``in_proj`` -> (x, z); x -> depthwise 3x3 + SiLU -> atrous split -> one SSM per sub-grid ->
    scatter back -> LayerNorm; the result is gated by SiLU(z) and projected back to ``dim``.

    Args:
        dim (int): Block width ``C``.
        ssm_ratio (float): ``d_inner / C``.
        d_state (int): SSM state size ``N``.
    """

    num_directions = 4

    def __init__(self, dim: int, ssm_ratio: float = 2.0, d_state: int = 16):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_inner = d_inner
        init_ssm_params(self, num_groups=self.num_directions, d_inner=d_inner, d_state=d_state,
                        dt_rank=-(-dim // 16))
        self.out_norm = nn.LayerNorm(d_inner)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        size = tuple(x.shape[2:])
        # The scan runs in fp32 whatever the autocast dtype, as the official kernel call does.
        ys = scan_directions(atrous_scan(x), self.x_proj_weight, self.dt_projs_weight,
                             self.dt_projs_bias, self.A_logs, self.Ds, force_fp32=True)
        y = self.out_norm(atrous_merge(ys, size).permute(0, 2, 3, 1))
        return self.out_proj(y.to(x.dtype) * F.silu(z))


class BiAttn(nn.Module):
    """Channel attention on channels-last maps: the gate comes from the normalised mean token.

    The un-normalised input is what gets scaled.
    """

    def __init__(self, channels: int, ratio: float = 0.125):
        super().__init__()
        reduced = int(channels * ratio)
        self.norm = nn.LayerNorm(channels)
        self.global_reduce = nn.Linear(channels, reduced)
        self.channel_select = nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(x).mean(dim=(1, 2), keepdim=True)
        return x * torch.sigmoid(self.channel_select(F.gelu(self.global_reduce(pooled))))


class EVSSBlock(nn.Module):
    """``x + DropPath(se(ES2D(norm x)) + se(conv_branch(norm x)))``, channels-last.

    There is no MLP: the released models were trained with ``mlp_ratio=0``.
    """

    def __init__(self, dim: int, ssm_ratio: float, d_state: int, attn_ratio: float,
                 drop_path: float = 0.0, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.norm = nn.LayerNorm(dim)
        self.op = ES2D(dim, ssm_ratio, d_state)
        self.conv_branch = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 1))
        self.se = BiAttn(dim, attn_ratio)
        self.drop_path = DropPath(drop_path)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        local = self.conv_branch(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.se(self.op(h)) + self.se(local))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation of the inverted residual (1x1 convs, ReLU, sigmoid), NCHW."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(F.relu(self.conv_reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class InvertedResidual(nn.Module):
    """MobileNetV2 block, NCHW: 1x1 expand -> depthwise 3x3 -> SE -> 1x1 project (+ x)."""

    def __init__(self, dim: int, expand_ratio: int, se_ratio: float, drop_path: float = 0.0,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        hidden = dim * expand_ratio
        self.conv_pw = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.conv_dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.se = SqueezeExcite(hidden, max(1, int(hidden * se_ratio)))
        self.conv_pw2 = nn.Sequential(nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv_pw2(self.se(self.conv_dw(self.conv_pw(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class EVSSStage(nn.Module):
    """``blocks`` then ``downsample`` (keys ``layers.{0,1}.blocks.*`` / ``.downsample.*``)."""

    def __init__(self, blocks: nn.Module, downsample: nn.Module):
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class InResStage(nn.Sequential):
    """Indexed like the checkpoints: 0 = to NCHW, 1..d = blocks, d+1 = to NHWC, d+2 = downsample."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module):
        super().__init__(Permute(0, 3, 1, 2), *blocks, Permute(0, 2, 3, 1), downsample)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for module in list(self)[:-1]:
            x = module(x)
        return x

    @property
    def downsample(self) -> nn.Module:
        return self[-1]


@MODELS.register_module()
class EfficientVMamba(VSSMBackboneMixin, BaseModule):
    """EfficientVMamba backbone (arXiv 2403.09977, AAAI 2025).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'`` or ``'base'`` (aliases ``'t'``, ``'s'``,
            ``'b'``), the released checkpoints, or a dict with at least ``dims`` and ``depths``
            (optional: ``evss_stages``, ``d_state``, ``ssm_ratio``, ``attn_ratio``,
            ``expand_ratio``, ``se_ratio``, ``drop_path_rate``; defaults as released).
        out_indices (Sequence[int] | int): Stages whose outputs (taken before the stage's
            downsampling and passed through ``outnorm{i}``) are returned, NCHW. Defaults to
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

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 out_indices: Union[Sequence[int], int] = (3, ),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_path_rate: Optional[float] = None,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = dict(self.arch_defaults, **self.parse_arch(arch, required=('dims', 'depths')))
        self.arch_name = self.arch_aliases.get(arch.lower(), arch.lower()) \
            if isinstance(arch, str) else 'custom'
        dims, depths = tuple(settings['dims']), tuple(settings['depths'])
        if len(dims) != len(depths):
            raise ValueError(f'arch dims {dims} and depths {depths} must have the same length')
        evss_stages = settings['evss_stages']
        if not 0 <= evss_stages <= len(depths):
            raise ValueError(f'evss_stages={evss_stages} must be between 0 and {len(depths)}')
        self.dims, self.depths = dims, depths
        self.num_stages = len(depths)
        if drop_path_rate is None:
            drop_path_rate = settings['drop_path_rate']
        self.out_indices = self.parse_out_indices(out_indices, self.num_stages)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, dims[0], 4, 4), Permute(0, 2, 3, 1), nn.LayerNorm(dims[0]))
        # On the CPU even when the model is built on the meta device (to count parameters).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i, dim in enumerate(dims):
            stage_rates = rates[sum(depths[:i]):sum(depths[:i + 1])]
            downsample = PatchMerging2D(dim, dims[i + 1]) if i < self.num_stages - 1 \
                else nn.Identity()
            if i < evss_stages:
                blocks = nn.Sequential(*[
                    EVSSBlock(dim, settings['ssm_ratio'], settings['d_state'],
                              settings['attn_ratio'], rate, with_cp) for rate in stage_rates])
                self.layers.append(EVSSStage(blocks, downsample))
            else:
                blocks = [InvertedResidual(dim, settings['expand_ratio'], settings['se_ratio'],
                                           rate, with_cp) for rate in stage_rates]
                self.layers.append(InResStage(blocks, downsample))

        for i in self.out_indices:
            self.add_module(f'outnorm{i}', nn.LayerNorm(dims[i]))
        self._freeze_stages()

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        return self.forward_stages(self.patch_embed(x), 'body')

    def stem_and_stages(self):
        return self.patch_embed, list(self.layers)
