"""LocalVMamba (LocalMamba, arXiv 2403.09338): the hierarchical LocalMamba backbone.

VMamba-v1 layout (patch 4, four stages, patch merging); the K directions of a block (``h``,
``v``, their flips, the 2x2 / 7x7 window scans ``w2`` / ``w7``; see docs/scan_orders.md) are
scanned together by one :class:`~vssm_mm.models.layers.SelectiveSSM`, their outputs re-weighted
by one channel attention and summed (or, in the search supernet, softmax-weighted).

``official_vertical_quirk`` reproduces the official reverse of ``v`` / ``v_flip``, which is
wrong for H != W (every official COCO / ADE20K run had it).
"""
import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.ops.scan_orders import get_scan_order
from vssm_mm.registry import MODELS

from ..layers import DropPath, PatchifyStem, PatchMerging, SelectiveSSM, Stage
from ..layers.localmamba_blocks import DirectionMerge, resolve_directions
from .base import VSSMBackboneMixin


class LocalScanMixer(nn.Module):
    """VMamba's SS2D with LocalMamba's directions: in_proj, conv, K scans, merge, out_proj."""

    def __init__(self, dim: int, directions: Sequence[str], search: bool = False,
                 d_state: int = 16, ssm_ratio: float = 2.0, d_conv: int = 3,
                 official_vertical_quirk: bool = False):
        super().__init__()
        self.directions = tuple(directions)
        self.official_vertical_quirk = official_vertical_quirk
        d_inner = int(ssm_ratio * dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2,
                              groups=d_inner)
        self.ssm = SelectiveSSM(len(self.directions), d_inner, d_state, math.ceil(dim / 16))
        self.direction_merge = DirectionMerge(len(self.directions), search, d_inner)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2).contiguous()))
        batch, channels, height, width = x.shape
        order = get_scan_order(self.directions, height, width,
                               official_vertical_quirk=self.official_vertical_quirk)
        # Directions are right-padded with zeros to a common length and scanned together.
        maps = order.merge(self.ssm(order.scan(x)), sum_directions=False)  # (B, K, d, H, W)
        y = self.direction_merge(maps.flatten(3).transpose(2, 3))
        y = self.out_norm(y).view(batch, height, width, channels).to(x.dtype)
        return self.out_proj(y * F.silu(z))


class LocalVMambaBlock(nn.Module):
    """``x + DropPath(mixer(LayerNorm(x)))`` on channels-last maps (no MLP)."""

    def __init__(self, dim: int, mixer: nn.Module, drop_path: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


@MODELS.register_module()
class LocalVMamba(VSSMBackboneMixin, BaseModule):
    """LocalVMamba: hierarchical LocalMamba backbone (VMamba v1 layout, patch 4).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'tiny_search'``, ``'small_search'``
            (supernets), or a dict with ``dims, depths`` and optionally ``d_state, ssm_ratio,
            directions, drop_path_rate``.
        out_indices (Sequence[int] | int): Stages whose normed outputs (NCHW) are returned;
            ``(3,)`` feeds the classifier (the official ``classifier.norm``).
        directions (str | list, optional): Override the arch's per-block directions.
        official_vertical_quirk (bool): Reproduce the official (H != W) ``v`` reverse.
        frozen_stages (int): Freeze the stem and the first stages.
        norm_eval (bool): Kept for config uniformity (no BatchNorm here).
        drop_path_rate (float, optional): Stochastic depth (default: the arch's).
        with_cp (bool): Activation checkpointing per block.
        init_cfg (dict | list, optional): mmengine init config.
    """

    arch_zoo: Dict[str, dict] = {
        'tiny': dict(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2),
                     directions='localvmamba_tiny', drop_path_rate=0.2),
        'small': dict(dims=(96, 192, 384, 768), depths=(2, 2, 27, 2),
                      directions='localvmamba_small', drop_path_rate=0.2),
        'tiny_search': dict(dims=(32, 64, 128, 256), depths=(2, 2, 9, 2), directions='search',
                            drop_path_rate=0.1),
        'small_search': dict(dims=(32, 64, 128, 256), depths=(2, 2, 27, 2), directions='search',
                             drop_path_rate=0.1),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 't_search': 'tiny_search',
                    's_search': 'small_search'}

    def __init__(self, arch: Union[str, dict] = 'tiny',
                 out_indices: Union[Sequence[int], int] = (3, ), directions=None,
                 official_vertical_quirk: bool = False, frozen_stages: int = -1,
                 norm_eval: bool = False, drop_path_rate: Optional[float] = None,
                 with_cp: bool = False, init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = self.init_arch(arch, ('dims', 'depths'),
                                  dict(d_state=16, ssm_ratio=2.0, drop_path_rate=0.2))
        dims, depths = tuple(settings['dims']), tuple(settings['depths'])
        if len(dims) != len(depths):
            raise ValueError(f'dims {dims} and depths {depths} must have the same length')
        self.dims, self.depths = dims, depths
        self.init_outputs(len(depths), out_indices, frozen_stages, norm_eval)
        if drop_path_rate is None:
            drop_path_rate = settings['drop_path_rate']
        block_dirs, search = resolve_directions(
            directions if directions is not None else settings.get('directions', 'search'),
            sum(depths))
        self.search = search

        self.stem = PatchifyStem(dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            blocks = [
                LocalVMambaBlock(
                    dim,
                    LocalScanMixer(dim, block_dirs[first + j], search, settings['d_state'],
                                   settings['ssm_ratio'],
                                   official_vertical_quirk=official_vertical_quirk),
                    rates[first + j]) for j in range(depth)
            ]
            downsample = PatchMerging(dim, dims[i + 1]) if i < self.num_stages - 1 else None
            self.stages.append(Stage(blocks, downsample, with_cp))
        self.build_out_norms(nn.LayerNorm, dims)
        self._freeze_stages()

    def forward(self, x: torch.Tensor):
        self.check_input(x, min_size=16)
        return self.forward_stages(self.stem(x))
