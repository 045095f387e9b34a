"""GroupMamba: a visual state-space backbone built from Modulated Group Mamba layers.

Each layer splits the (LayerNorm-ed) channels into four contiguous groups. Each group gets its
own projections around a single-direction scan, and group k scans the map in one
cross2d direction (row-major, column-major, and both reversed). The four outputs gate the
normalised input multiplicatively (``skip_scale``). A squeeze-excitation "channel affinity"
vector computed from the layer input then modulates the result, and the layer's LayerNorm is
applied once more before the output projection.

The macro design: a three-conv stem (stride 4), stride-2 conv downsamples, four stages of
(layer, depth-wise-conv FFN) blocks, and for classification a class token (the mean of the
last stage's tokens) refined by one more GroupMamba block on a 1x1 "image", then ``class_norm``.

The module tree is ``stem``, ``stages.{i}.{blocks,downsample}``, ``class_block`` /
``class_norm`` (classification) or ``out_norms`` (dense); the official layout (``patch_embed{i}``,
``block{i}``, ``norm{i}``, ``post_network``, ``mamba_g{k}``) is mapped onto it by
``vssm_mm/checkpoint/families/groupmamba.py``.
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.ops.scan_orders import group_merge, group_scan
from vssm_mm.registry import MODELS

from ..layers import DropPath, SelectiveSSM, Stage
from .base import VSSMBackboneMixin

Size = Tuple[int, int]
NUM_GROUPS = 4


def _tokens_to_map(x: torch.Tensor, size: Size) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


class GroupProjection(nn.Module):
    """The projections around the scan of one channel group (official ``SS2D`` with K=1).

    ``in_proj`` gives the scan input and a SiLU gate; the scan input goes through a
    depth-wise 3x3 conv and SiLU. The SSM of all four groups is one
    :class:`~vssm_mm.models.layers.SelectiveSSM` in :class:`ModulatedGroupMamba`. The scan
    output is normalised by ``out_norm``, gated and projected back by ``out_proj``.
    """

    def __init__(self, dim: int, d_conv: int = 3):
        super().__init__()
        self.in_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.conv = nn.Conv2d(dim, dim, d_conv, padding=(d_conv - 1) // 2, groups=dim)
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def project_in(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, d) -> (scan input map (B, d, H, W), gate (B, H, W, d))."""
        x, gate = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2)))
        return x, F.silu(gate)

    def project_out(self, y: torch.Tensor, gate: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Scan output (B, H, W, d), fp32 / fp64 -> (B, H, W, d) in ``dtype``."""
        return self.out_proj(self.out_norm(y).to(dtype) * gate)


class ModulatedGroupMamba(nn.Module):
    """The Modulated Group Mamba layer (official ``GroupMambaLayer``) on (B, N, C) tokens.

    Args:
        dim (int): Channels ``C`` (divisible by 4).
        d_state (int): SSM state size.
        reduction (int): Channel-affinity bottleneck ``C // reduction``.
    """

    def __init__(self, dim: int, d_state: int = 1, reduction: int = 16):
        super().__init__()
        if dim % NUM_GROUPS:
            raise ValueError(f'GroupMamba widths must be divisible by {NUM_GROUPS}, got {dim}')
        self.fc1 = nn.Linear(dim, dim // reduction)
        self.fc2 = nn.Linear(dim // reduction, dim)
        self.norm = nn.LayerNorm(dim)
        width = dim // NUM_GROUPS
        self.groups = nn.ModuleList(GroupProjection(width) for _ in range(NUM_GROUPS))
        self.ssm = SelectiveSSM(NUM_GROUPS, width, d_state, math.ceil(width / 16))
        self.proj = nn.Linear(dim, dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        if x.dtype == torch.float16:  # as the official layer: fp16 tokens are up-cast
            x = x.float()
        batch, _, channels = x.shape
        x = self.norm(x)
        affinity = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=1)))))
        x = x.reshape(batch, *size, channels)
        groups = self.groups
        maps, gates = zip(*(g.project_in(part) for g, part in zip(groups, x.chunk(NUM_GROUPS, -1))))
        # One selective scan for the four groups: group k is scanned in direction k.
        ys = self.ssm(group_scan(torch.cat(maps, dim=1)))
        ys = group_merge(ys, size).permute(0, 2, 3, 1).chunk(NUM_GROUPS, dim=-1)
        y = torch.cat([g.project_out(part, gate, maps[0].dtype)
                       for g, part, gate in zip(groups, ys, gates)], dim=-1)
        y = (y * self.skip_scale * x).reshape(batch, -1, channels) * affinity[:, None]
        return self.proj(self.norm(y))


class TokenDWConv(nn.Module):
    """Depth-wise 3x3 conv on (B, N, C) tokens of an H x W map (checkpoint key ``dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return self.dwconv(_tokens_to_map(x, size)).flatten(2).transpose(1, 2)


class FFN(nn.Module):
    """fc1 -> (depth-wise 3x3 conv) -> GELU -> fc2; the conv comes before the activation."""

    def __init__(self, dim: int, hidden: int, dwconv: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = TokenDWConv(hidden) if dwconv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: Optional[Size] = None) -> torch.Tensor:
        x = self.fc1(x)
        if self.dwconv is not None:
            x = self.dwconv(x, size)
        return self.fc2(self.act(x))


class GroupMambaBlock(nn.Module):
    """``x + DropPath(layer(x))`` (the layer normalises itself) then the FFN residual."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.mixer = ModulatedGroupMamba(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(x, size))
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class ClassBlock(nn.Module):
    """Refines the class token alone: post-norm layer residual, pre-norm FFN residual."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = ModulatedGroupMamba(dim)
        self.mlp = FFN(dim, int(dim * mlp_ratio), dwconv=False)

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        # The layer sees the token as a 1x1 map (sequence length 1).
        cls_token = cls_token + self.norm1(self.mixer(cls_token, (1, 1)))
        return cls_token + self.mlp(self.norm2(cls_token))


class Stem(nn.Module):
    """Three convs (7x7 s2, 3x3, 3x3; BN + ReLU) and a 3x3 s2 projection: stride 4."""

    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        layers = []
        for i in range(3):
            layers += [nn.Conv2d(3 if i == 0 else hidden, hidden, 7 if i == 0 else 3,
                                 stride=2 if i == 0 else 1, padding=3 if i == 0 else 1,
                                 bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden, out_channels, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Size]:
        x = self.proj(self.conv(x))
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(x.shape[2:])


class TokenDownsample(nn.Module):
    """LayerNorm on the stage's tokens, 3x3 stride-2 conv (H -> ceil(H/2)), LayerNorm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_channels, eps=1e-6)
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor, size: Size) -> Tuple[torch.Tensor, Size]:
        x = self.proj(_tokens_to_map(self.norm_in(x), size))
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(x.shape[2:])


@MODELS.register_module()
class GroupMamba(VSSMBackboneMixin, BaseModule):
    """GroupMamba backbone (arXiv 2407.13772, CVPR 2025).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` (or ``'t'``, ``'s'``, ``'b'``),
            or a dict with the keys ``stem_hidden_dim, embed_dims, depths, mlp_ratios``
            (optionally ``drop_path_rate``). Widths must be divisible by 4.
        out_indices (Sequence[int] | int): Stages whose outputs are returned (NCHW, each
            through its own output norm) when ``out_type='featmap'``.
        out_type (str): ``'featmap'`` (dense tasks) or ``'cls_token'``: the classification
            feature of the official model, i.e. the mean of the last stage's tokens refined
            by the class block and its norm, returned as ``((B, C4),)``.
            ``'cls_token'`` needs ``out_indices=(3,)``.
        frozen_stages (int): Freeze the stem and the first ``frozen_stages`` stages (a stage
            is its blocks, its norm and the next downsample; the last one also holds the class
            block and its norm); -1 freezes nothing.
        norm_eval (bool): Keep the stem's BatchNorm layers in eval mode while training.
        drop_path_rate (float, optional): Stochastic depth; defaults to the arch's value (0.05,
            what the official training script uses for every variant).
        with_cp (bool): Activation checkpointing per block.
        init_cfg (dict | list[dict], optional): mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')``.
    """

    arch_zoo: Dict[str, dict] = {
        'tiny': dict(stem_hidden_dim=32, embed_dims=(64, 128, 348, 448), depths=(3, 4, 9, 3),
                     mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.05),
        'small': dict(stem_hidden_dim=64, embed_dims=(64, 128, 348, 512), depths=(3, 4, 16, 3),
                      mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.05),
        'base': dict(stem_hidden_dim=64, embed_dims=(96, 192, 424, 512), depths=(3, 6, 21, 3),
                     mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.05),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 'b': 'base'}
    out_types = ('featmap', 'cls_token')

    def __init__(self, arch: Union[str, dict] = 'tiny',
                 out_indices: Union[Sequence[int], int] = (3, ), out_type: str = 'featmap',
                 frozen_stages: int = -1, norm_eval: bool = False,
                 drop_path_rate: Optional[float] = None, with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = self.init_arch(
            arch, required=('stem_hidden_dim', 'embed_dims', 'depths', 'mlp_ratios'))
        dims, depths = tuple(settings['embed_dims']), tuple(settings['depths'])
        mlp_ratios = tuple(settings['mlp_ratios'])
        if not len(dims) == len(depths) == len(mlp_ratios) == 4:
            raise ValueError('GroupMamba has 4 stages: embed_dims, depths and mlp_ratios need 4 '
                             f'entries each, got {dims}, {depths}, {mlp_ratios}')
        bad = [d for d in dims if d % NUM_GROUPS or d < 16]
        if bad:
            raise ValueError(f'GroupMamba widths must be multiples of {NUM_GROUPS} and at least '
                             f'16 (the channel-affinity bottleneck is C // 16), got {bad}')
        if out_type not in self.out_types:
            raise ValueError(f'out_type must be one of {self.out_types}, got {out_type!r}')
        self.dims, self.depths = dims, depths
        self.init_outputs(len(depths), out_indices, frozen_stages, norm_eval)
        if out_type == 'cls_token' and self.out_indices != (self.num_stages - 1, ):
            raise ValueError("out_type='cls_token' is the classification feature after the last "
                             f'stage: use out_indices=(3,), got {out_indices}')
        self.out_type = out_type
        if drop_path_rate is None:
            drop_path_rate = settings.get('drop_path_rate', 0.0)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stem = Stem(settings['stem_hidden_dim'], dims[0])
        # The last stage's tokens are not normalised; the others' are, by the downsample.
        self.stages = nn.ModuleList(
            Stage([GroupMambaBlock(dim, mlp_ratios[i], rates[sum(depths[:i]) + j])
                   for j in range(depth)],
                  TokenDownsample(dim, dims[i + 1]) if i < self.num_stages - 1 else None,
                  with_cp)
            for i, (dim, depth) in enumerate(zip(dims, depths)))
        if out_type == 'cls_token':
            self.class_block = ClassBlock(dims[-1], mlp_ratios[-1])
            self.class_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        else:
            self.build_out_norms(nn.LayerNorm, dims, eps=1e-6)
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self.check_input(x, min_size=1)  # ceil-halving convs: any size works
        outs = []
        last = max(self.out_indices)
        x, size = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage.forward_blocks(x, size)
            if self.out_type == 'featmap' and i in self.out_indices:
                outs.append(_tokens_to_map(self.out_norms[str(i)](x), size).contiguous())
            if i == last:
                break
            x, size = stage.downsample(x, size)
        if self.out_type == 'cls_token':
            cls_token = self.class_block(x.mean(dim=1, keepdim=True))
            return (self.class_norm(cls_token[:, 0]), )
        return tuple(outs)

    def init_extra(self, module):
        # The official init also draws convolutions fan-out normal and starts skip scales at 1.
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0, math.sqrt(2.0 / (fan_out // module.groups)))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ModulatedGroupMamba):
            nn.init.ones_(module.skip_scale)

    def stem_and_stages(self):
        stages = list(self.stages)
        if self.out_type == 'cls_token':  # the class block belongs to the last stage
            stages[-1] = nn.ModuleList([stages[-1], self.class_block, self.class_norm])
        return self.stem, stages
