"""LocalMamba (arXiv 2403.09338): visual Mamba with windowed scans and searched directions.

Two backbones share the scan vocabulary (``h``, ``v``, their flips, and the 2x2 / 7x7 window
scans ``w2`` / ``w7``; see docs/scan_orders.md), the per-direction channel attention and the
direction search:

* :class:`LocalVim`: plain, Vim-like (patch 16, pre-norm blocks with a deferred residual, RoPE
  and absolute position embedding, or a class token in the middle of the sequence). Each layer
  scans four directions, each with its own causal conv1d and SSM parameters.
* :class:`LocalVMamba`: hierarchical, VMamba-v1-like (patch 4, four stages, patch merging); the
  four directions of a block are scanned together by one grouped selective scan.

Each layer's directions are data (``vssm_mm/models/layers/localmamba_blocks.py``): the lists the
official search found, or ``'search'`` for the supernet that scans all eight with learnable
weights.

Official quirks are off by default and available by name: ``official_vertical_quirk`` (the
official reverse of ``v`` / ``v_flip`` is wrong for H != W, which every COCO / ADE20K run had) and
``official_shared_A_log`` (LocalVim's four ``A_log_k`` are built from one tensor; see the docs).
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import nn

from vssm_mm.ops.scan_orders import get_scan_order
from vssm_mm.registry import MODELS

from ..layers import DropPath, LayerNorm2d
from ..layers.localmamba_blocks import (BiAttn, DirectionMerge, apply_rotary, resize_token_table,
                                        resolve_directions, rotary_tables, square_grid)
from ..layers.ssm import init_ssm_params, scan_directions
from .base import VSSMBackboneMixin
from .msvmamba import PatchMerging2D

# -- LocalVim ----------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight`` (Mamba's RMSNorm, weight only)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight
        return out.to(x.dtype)


class PatchEmbed(nn.Module):
    """Conv patchify; pads the image at the bottom/right to a multiple of the patch size."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor):
        height, width = x.shape[2:]
        pad_h, pad_w = (-height) % self.patch_size, (-width) % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


class RotaryEmbedding(nn.Module):
    """Buffers ``freqs_cos`` / ``freqs_sin`` ``(H*W, dim)`` for the model's token grid.

    Stored in checkpoints (as in the official code); a checkpoint made for another grid is
    resized bicubically when loaded, like the position embedding.
    """

    def __init__(self, dim: int, grid: Tuple[int, int]):
        super().__init__()
        self.grid = tuple(grid)
        cos, sin = rotary_tables(dim, self.grid)
        self.register_buffer('freqs_cos', cos)
        self.register_buffer('freqs_sin', sin)

    def tables(self, grid: Tuple[int, int]):
        return (resize_token_table(self.freqs_cos, self.grid, grid),
                resize_token_table(self.freqs_sin, self.grid, grid))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ('freqs_cos', 'freqs_sin'):
            table = state_dict.get(prefix + name)
            if table is not None and table.shape != getattr(self, name).shape:
                state_dict[prefix + name] = resize_token_table(
                    table, square_grid(table.shape[0]), self.grid)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LocalVimMixer(nn.Module):
    """MultiMamba: in_proj, K direction scans with their own conv1d/SSM, BiAttn, sum, out_proj.

    Per direction k the parameters are ``conv1d_k``, ``x_proj_k``, ``dt_proj_k``, ``A_log_k`` and
    ``D_k`` (official names); the K scans run as one grouped selective scan, each direction
    gated by SiLU of its own scanned copy of ``z`` (Mamba's fused inner function).
    """

    def __init__(self, dim: int, directions: Sequence[str], search: bool = False,
                 d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 middle_cls: bool = False, official_vertical_quirk: bool = False,
                 official_shared_A_log: bool = False):
        super().__init__()
        self.directions = tuple(directions)
        self.middle_cls = middle_cls
        self.official_vertical_quirk = official_vertical_quirk
        self.d_inner = d_inner = int(expand * dim)
        self.d_conv = d_conv
        dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.multi_scan = DirectionMerge(len(self.directions), search)
        A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        for k in range(len(self.directions)):
            # Official: nn.Parameter(one tensor) per direction, i.e. shared storage.
            setattr(self, f'A_log_{k}',
                    nn.Parameter(A_log if official_shared_A_log else A_log.clone()))
            setattr(self, f'conv1d_{k}', nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner,
                                                   padding=d_conv - 1))
            setattr(self, f'x_proj_{k}', nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False))
            setattr(self, f'dt_proj_{k}', nn.Linear(dt_rank, d_inner))
            setattr(self, f'D_{k}', nn.Parameter(torch.ones(d_inner)))
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.attn = BiAttn(d_inner)
        self.reset_ssm()

    @torch.no_grad()
    def reset_ssm(self, dt_min=0.001, dt_max=0.1, dt_floor=1e-4):
        """Mamba's init of the per-direction dt projections, A and D."""
        for k in range(len(self.directions)):
            dt_proj = self._get('dt_proj', k)
            std = dt_proj.in_features**-0.5
            nn.init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) +
                           math.log(dt_min)).clamp(min=dt_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            n = self._get('A_log', k).shape[1]
            self._get('A_log', k).copy_(torch.log(torch.arange(1, n + 1).float()).expand(
                self.d_inner, n))
            self._get('D', k).fill_(1.0)

    def _get(self, name: str, k: int):
        return getattr(self, f'{name}_{k}')

    def _stacked(self):
        """Per-direction parameters stacked in the layout of ``scan_directions``."""
        k = range(len(self.directions))
        convs = [self._get('conv1d', i) for i in k]
        dt_projs = [self._get('dt_proj', i) for i in k]
        return (torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]),
                torch.stack([self._get('x_proj', i).weight for i in k]),
                torch.stack([p.weight for p in dt_projs]), torch.stack([p.bias for p in dt_projs]),
                torch.cat([self._get('A_log', i) for i in k]),
                torch.cat([self._get('D', i) for i in k]))

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        batch, length, _ = x.shape
        num_dirs, d_inner = len(self.directions), self.d_inner
        xz = self.in_proj(x)
        if self.middle_cls:
            cls_pos = (length - 1) // 2
            cls_xz = xz[:, cls_pos]
            xz = torch.cat([xz[:, :cls_pos], xz[:, cls_pos + 1:]], dim=1)
        order = get_scan_order(self.directions, *grid,
                               official_vertical_quirk=self.official_vertical_quirk)
        # x and z are scanned together: window padding zeroes both (as in the official code).
        seqs = order.scan(xz.transpose(1, 2).unflatten(2, grid))  # (B, K, 2d, L)
        if self.middle_cls:
            cls_col = cls_xz[:, None, :, None].expand(batch, num_dirs, -1, 1)
            seqs = torch.cat([seqs[..., :cls_pos], cls_col, seqs[..., cls_pos:]], dim=-1)
        seq_len = seqs.shape[-1]
        u, z = seqs.chunk(2, dim=2)
        conv_w, conv_b, x_proj_w, dt_w, dt_b, A_logs, Ds = self._stacked()
        u = F.conv1d(u.reshape(batch, num_dirs * d_inner, seq_len), conv_w, conv_b,
                     padding=self.d_conv - 1, groups=num_dirs * d_inner)[..., :seq_len]
        u = F.silu(u).view(batch, num_dirs, d_inner, seq_len)
        # Mamba's fused inner function keeps the autocast dtype (no fp32 cast, gated output).
        ys = scan_directions(u, x_proj_w, dt_w, dt_b, A_logs, Ds,
                             z=z.reshape(batch, num_dirs * d_inner, seq_len),
                             out_float32=False, force_fp32=False)
        if self.middle_cls:
            cls_out = ys[..., cls_pos:cls_pos + 1]
            ys = torch.cat([ys[..., :cls_pos], ys[..., cls_pos + 1:]], dim=-1)
        outs = order.merge(ys, sum_directions=False).flatten(3)  # (B, K, d, H*W)
        if self.middle_cls:
            outs = torch.cat([outs[..., :cls_pos], cls_out, outs[..., cls_pos:]], dim=-1)
        y = self.multi_scan(outs.transpose(2, 3), attn=self.attn)
        return self.out_proj(y)


class LocalVimLayer(nn.Module):
    """Add -> norm -> mixer, returning (mixer output, residual) as Vim/Mamba blocks do."""

    def __init__(self, dim: int, mixer: nn.Module, norm: nn.Module, drop_path: float):
        super().__init__()
        self.mixer = mixer
        self.norm = norm
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden, residual, grid):
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden, grid), residual.float()


def _norm(norm_type: str, dim: int) -> nn.Module:
    if norm_type == 'rms':
        return RMSNorm(dim)
    if norm_type == 'ln':
        return nn.LayerNorm(dim)
    raise ValueError(f"norm_type must be 'rms' or 'ln', got {norm_type!r}")


@MODELS.register_module()
class LocalVim(VSSMBackboneMixin, BaseModule):
    """LocalVim: plain Vim-style LocalMamba backbone (patch 16).

    The ``depth`` layers form four stages of ``depth / 4`` layers (layers 4, 9, 14, 19 end the
    stages of the depth-20 models, the official segmentation outputs). Stage ``i`` returns:

    * with ``final_norm`` and ``i == 3``: ``norm_f(residual + last mixer output)``, the
      classifier's input (the official classification path);
    * otherwise ``outnorm{i}`` (LayerNorm) of the stage's last mixer output, the official
      detection / segmentation backbone output.

    Args:
        arch (str | dict): ``'tiny'``, ``'tiny_mid'`` (middle class token, no RoPE),
            ``'small'``, ``'tiny_unsearched'`` / ``'small_unsearched'`` (LocalVim-T*/S*),
            ``'search'`` (supernet), or a dict with ``embed_dim, depth`` and optionally
            ``d_state, expand, d_conv, rope, cls_token, norm, directions, drop_path_rate``.
        img_size (int | tuple): Size the position embedding and RoPE tables are built for;
            other input sizes resize them on the fly (bicubic).
        patch_size (int): Patch size.
        out_indices (Sequence[int] | int): Stages to return (see above). Defaults to ``(3,)``.
        out_type (str): ``'featmap'`` (B, C, H/16, W/16) or ``'cls_token'`` (B, C) for the
            middle-class-token model.
        final_norm (bool): Use ``norm_f`` on the residual stream for stage 3.
        norm_type (str, optional): ``'rms'`` or ``'ln'`` block norms (default: the arch's;
            the official detection / segmentation configs switch to ``'ln'``).
        directions (str | list, optional): Override the arch's per-layer directions.
        official_vertical_quirk (bool): Reproduce the official (H != W) ``v`` reverse.
        official_shared_A_log (bool): Build the K ``A_log_k`` of a layer on one shared tensor,
            as the official constructor does (see docs/models/localmamba.md).
        drop_path_rate (float, optional): Stochastic depth (default: the arch's).
        frozen_stages (int): Freeze patch/position embedding and the first stages.
        norm_eval (bool): Kept for config uniformity (no BatchNorm here).
        with_cp (bool): Activation checkpointing per layer.
        init_cfg (dict | list, optional): mmengine init config.
    """

    arch_zoo: Dict[str, dict] = {
        'tiny': dict(embed_dim=192, depth=20, directions='localvim', drop_path_rate=0.1),
        'tiny_mid': dict(embed_dim=192, depth=20, rope=False, cls_token=True,
                         directions='localvim', drop_path_rate=0.1),
        'small': dict(embed_dim=384, depth=20, directions='localvim', drop_path_rate=0.1),
        'tiny_unsearched': dict(embed_dim=192, depth=20, directions='localvim_unsearched',
                                drop_path_rate=0.1),
        'small_unsearched': dict(embed_dim=384, depth=20, directions='localvim_unsearched',
                                 drop_path_rate=0.1),
        'search': dict(embed_dim=128, depth=20, directions='search', drop_path_rate=0.1),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 't_mid': 'tiny_mid',
                    'tiny_middle_cls': 'tiny_mid', 'tiny_search': 'search'}
    defaults = dict(d_state=16, expand=2, d_conv=4, rope=True, cls_token=False, norm='rms',
                    directions='localvim', drop_path_rate=0.1)
    num_stages = 4

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 out_indices: Union[Sequence[int], int] = (3, ),
                 out_type: str = 'featmap',
                 final_norm: bool = True,
                 norm_type: Optional[str] = None,
                 directions=None,
                 official_vertical_quirk: bool = False,
                 official_shared_A_log: bool = False,
                 drop_path_rate: Optional[float] = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = dict(self.defaults, **self.parse_arch(arch, required=('embed_dim', 'depth')))
        self.arch_name = self.arch_aliases.get(arch.lower(), arch.lower()) \
            if isinstance(arch, str) else 'custom'
        dim, depth = settings['embed_dim'], settings['depth']
        if depth < self.num_stages:
            raise ValueError(f'LocalVim needs depth >= {self.num_stages}, got {depth}')
        if out_type not in ('featmap', 'cls_token'):
            raise ValueError(f"out_type must be 'featmap' or 'cls_token', got {out_type!r}")
        if out_type == 'cls_token' and not settings['cls_token']:
            raise ValueError("out_type='cls_token' needs an arch with a class token ('tiny_mid')")
        self.embed_dim, self.depth = dim, depth
        self.dims = (dim, ) * self.num_stages
        self.out_indices = self.parse_out_indices(out_indices, self.num_stages)
        self.stage_ends = tuple((s + 1) * depth // self.num_stages - 1
                                for s in range(self.num_stages))
        self.out_type, self.final_norm = out_type, final_norm
        self.frozen_stages, self.norm_eval, self.with_cp = frozen_stages, norm_eval, with_cp
        self.use_rope, self.use_cls = bool(settings['rope']), bool(settings['cls_token'])
        norm_type = norm_type or settings['norm']
        if drop_path_rate is None:
            drop_path_rate = settings['drop_path_rate']
        layer_dirs, search = resolve_directions(
            directions if directions is not None else settings['directions'], depth)
        self.search = search

        self.patch_embed = PatchEmbed(patch_size, dim)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid = (math.ceil(img_size[0] / patch_size), math.ceil(img_size[1] / patch_size))
        num_tokens = self.grid[0] * self.grid[1] + int(self.use_cls)
        if self.use_cls:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.use_rope:
            self.rope = RotaryEmbedding(dim, self.grid)

        # Official schedule: layer i drops with linspace(0, rate, depth)[i - 1] (layer 0: none);
        # the add before norm_f uses the full rate.
        rates = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList([
            LocalVimLayer(
                dim,
                LocalVimMixer(dim, layer_dirs[i], search, settings['d_state'], settings['d_conv'],
                              settings['expand'], self.use_cls, official_vertical_quirk,
                              official_shared_A_log), _norm(norm_type, dim), rates[i])
            for i in range(depth)
        ])
        for i in self.out_indices:
            if final_norm and i == self.num_stages - 1:
                self.norm_f = _norm(norm_type, dim)
                self.drop_path = DropPath(drop_path_rate)
            else:
                self.add_module(f'outnorm{i}', nn.LayerNorm(dim))
        self._freeze_stages()

    # -- position tables -----------------------------------------------------------------------

    def _split_cls(self, table: torch.Tensor):
        """(1, N [+1], C) -> (patch tokens, cls entry or None); cls sits at index N // 2."""
        if not self.use_cls:
            return table, None
        middle = (table.shape[1] - 1) // 2
        return (torch.cat([table[:, :middle], table[:, middle + 1:]], dim=1),
                table[:, middle:middle + 1])

    def _join_cls(self, patches: torch.Tensor, cls: Optional[torch.Tensor]) -> torch.Tensor:
        if cls is None:
            return patches
        middle = patches.shape[1] // 2
        return torch.cat([patches[:, :middle], cls, patches[:, middle:]], dim=1)

    def _pos_embed(self, grid):
        if tuple(grid) == self.grid:
            return self.pos_embed
        patches, cls = self._split_cls(self.pos_embed)
        return self._join_cls(resize_token_table(patches, self.grid, grid), cls)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'pos_embed'
        table = state_dict.get(key)
        if table is not None and table.shape != self.pos_embed.shape and table.dim() == 3:
            patches, cls = self._split_cls(table)
            resized = resize_token_table(patches, square_grid(patches.shape[1]), self.grid)
            state_dict[key] = self._join_cls(resized, cls)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- forward -------------------------------------------------------------------------------

    def _run_layer(self, layer, hidden, residual, grid):
        if self.with_cp and self.training and hidden.requires_grad:
            return cp.checkpoint(layer, hidden, residual, grid, use_reentrant=False)
        return layer(hidden, residual, grid)

    def _format(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        if self.out_type == 'cls_token':
            return tokens[:, (tokens.shape[1] - 1) // 2]
        patches, _ = self._split_cls(tokens)
        return patches.transpose(1, 2).unflatten(2, grid).contiguous()

    def forward(self, x: torch.Tensor):
        self.check_input(x, min_size=16)
        tokens, grid = self.patch_embed(x)
        if self.use_cls:
            tokens = self._join_cls(tokens, self.cls_token.expand(tokens.shape[0], -1, -1))
        hidden = tokens + self._pos_embed(grid)
        rope = self.rope.tables(grid) if self.use_rope else None
        residual = None
        outs = []
        wanted = {self.stage_ends[i]: i for i in self.out_indices}
        for index, layer in enumerate(self.layers):
            if rope is not None:
                # Vim rotates the layer input and (after the first layer) the residual stream.
                hidden = apply_rotary(hidden, *rope)
                if residual is not None:
                    residual = apply_rotary(residual, *rope)
            hidden, residual = self._run_layer(layer, hidden, residual, grid)
            if index in wanted:
                stage = wanted[index]
                if self.final_norm and stage == self.num_stages - 1:
                    feat = residual + self.drop_path(hidden)
                    feat = self.norm_f(feat.to(self.norm_f.weight.dtype))
                else:
                    feat = getattr(self, f'outnorm{stage}')(hidden)
                outs.append(self._format(feat, grid))
                if len(outs) == len(wanted):
                    break
        return tuple(outs)

    # -- init / freezing -----------------------------------------------------------------------

    def init_weights(self):
        """The official model's effective initialisation (Vim's).

        Every Linear gets trunc-normal(0.02) weights and a zero bias -- including ``dt_proj_k``,
        whose Mamba init the official ``segm_init_weights`` overwrites -- norms 1/0, then each
        ``out_proj`` is re-drawn kaiming-uniform and divided by sqrt(depth).
        """
        if self.is_pretrained_init():
            super().init_weights()
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, 'bias', None) is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():
            for layer in self.layers:
                mixer = layer.mixer
                nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
                mixer.out_proj.weight.div_(math.sqrt(self.depth))
                for k in range(len(mixer.directions)):
                    n = mixer._get('A_log', k).shape[1]
                    mixer._get('A_log', k).copy_(
                        torch.log(torch.arange(1, n + 1).float()).expand(mixer.d_inner, n))
                    mixer._get('D', k).fill_(1.0)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self._is_init = True

    def paper_flops(self, height: int = 224, width: int = 224, num_classes: int = 1000) -> int:
        """FLOPs as the LocalVim paper counts them (the official model's analytic formula).

        Per layer: in_proj, one causal conv1d, one x_proj and one dt_proj (the paper counts
        these once although every direction has its own), per direction the scan terms
        ``D·L·N (A) + 2·D·L·N (B) + 2·D·N·L (C) + D·L (D) + D·L (z)``, the two channel-attention
        linears, out_proj and ``L·dim`` for the norm; plus the patch-embedding convolution and a
        ``dim x num_classes`` head. tools/get_flops.py reports this beside the traced count, which
        counts every direction's projections (about 0.27 GFLOPs more for LocalVim-T).
        """
        patch = self.patch_embed.patch_size
        dim = self.patch_embed.proj.out_channels
        grid = math.ceil(height / patch) * math.ceil(width / patch)
        flops = 3 * patch * patch * dim * grid
        length = grid + int(self.use_cls)
        for layer in self.layers:
            mixer = layer.mixer
            d_inner, d_state = mixer.d_inner, mixer.A_log_0.shape[1]
            flops += mixer.in_proj.in_features * mixer.in_proj.out_features * length
            flops += (length + mixer.d_conv - 1) * d_inner * mixer.d_conv
            flops += length * mixer.x_proj_0.in_features * mixer.x_proj_0.out_features
            flops += length * mixer.dt_proj_0.in_features * mixer.dt_proj_0.out_features
            flops += len(mixer.directions) * (5 * d_inner * length * d_state + 2 * d_inner * length)
            for linear in (mixer.attn.global_reduce, mixer.attn.channel_select):
                flops += linear.in_features * linear.out_features
            flops += length * mixer.out_proj.in_features * mixer.out_proj.out_features
            flops += length * mixer.out_proj.out_features
        return flops + dim * num_classes

    def stem_and_stages(self):
        bounds = (0, ) + tuple(end + 1 for end in self.stage_ends)
        stages = [nn.ModuleList(self.layers[bounds[s]:bounds[s + 1]])
                  for s in range(self.num_stages)]
        return self.patch_embed, stages

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        if self.frozen_stages < 0:
            return
        for param in (self.pos_embed, getattr(self, 'cls_token', None)):
            if param is not None:
                param.requires_grad = False
        if self.frozen_stages >= self.num_stages and hasattr(self, 'norm_f'):
            self.norm_f.eval()
            for param in self.norm_f.parameters():
                param.requires_grad = False


# -- LocalVMamba -------------------------------------------------------------------------------


class LocalSS2D(nn.Module):
    """VMamba's SS2D with LocalMamba's directions, shared BiAttn and sum (``op`` keys)."""

    def __init__(self, dim: int, directions: Sequence[str], search: bool = False,
                 d_state: int = 16, ssm_ratio: float = 2.0, d_conv: int = 3,
                 official_vertical_quirk: bool = False):
        super().__init__()
        self.directions = tuple(directions)
        self.official_vertical_quirk = official_vertical_quirk
        d_inner = int(ssm_ratio * dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2,
                                groups=d_inner)
        init_ssm_params(self, num_groups=len(self.directions), d_inner=d_inner, d_state=d_state,
                        dt_rank=math.ceil(dim / 16))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.multi_scan = DirectionMerge(len(self.directions), search, attn_channels=d_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        z = F.silu(z)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        batch, channels, height, width = x.shape
        order = get_scan_order(self.directions, height, width,
                               official_vertical_quirk=self.official_vertical_quirk)
        # Directions are right-padded with zeros to a common length and scanned together (fp32).
        ys = scan_directions(order.scan(x), self.x_proj_weight, self.dt_projs_weight,
                             self.dt_projs_bias, self.A_logs, self.Ds)
        maps = order.merge(ys, sum_directions=False)  # (B, K, d, H, W)
        y = self.multi_scan(maps.flatten(3).transpose(2, 3))
        y = self.out_norm(y).view(batch, height, width, channels).to(x.dtype)
        return self.out_proj(y * z)


class LocalVSSBlock(nn.Module):
    """``x + DropPath(SS2D(LayerNorm(x)))`` on channels-last maps (no MLP)."""

    def __init__(self, dim: int, op: nn.Module, drop_path: float, with_cp: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = op
        self.drop_path = DropPath(drop_path)
        self.with_cp = with_cp

    def _forward(self, x):
        return x + self.drop_path(self.op(self.norm(x)))

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class LocalVMambaStage(nn.Module):
    """``blocks`` then ``downsample`` (keys as in the official checkpoints)."""

    def __init__(self, blocks: nn.Module, downsample: nn.Module):
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample


@MODELS.register_module()
class LocalVMamba(VSSMBackboneMixin, BaseModule):
    """LocalVMamba: hierarchical LocalMamba backbone (VMamba v1 layout, patch 4).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'tiny_search'``, ``'small_search'``
            (supernets), or a dict with ``dims, depths`` and optionally ``d_state, ssm_ratio,
            directions, drop_path_rate``.
        out_indices (Sequence[int] | int): Stages whose ``outnorm{i}`` outputs (NCHW) are
            returned; ``(3,)`` feeds the classifier (the official ``classifier.norm``).
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

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 out_indices: Union[Sequence[int], int] = (3, ),
                 directions=None,
                 official_vertical_quirk: bool = False,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_path_rate: Optional[float] = None,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = dict(dict(d_state=16, ssm_ratio=2.0, drop_path_rate=0.2),
                        **self.parse_arch(arch, required=('dims', 'depths')))
        self.arch_name = self.arch_aliases.get(arch.lower(), arch.lower()) \
            if isinstance(arch, str) else 'custom'
        dims, depths = tuple(settings['dims']), tuple(settings['depths'])
        if len(dims) != len(depths):
            raise ValueError(f'dims {dims} and depths {depths} must have the same length')
        self.dims, self.depths = dims, depths
        self.num_stages = len(depths)
        self.out_indices = self.parse_out_indices(out_indices, self.num_stages)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        if drop_path_rate is None:
            drop_path_rate = settings['drop_path_rate']
        block_dirs, search = resolve_directions(
            directions if directions is not None else settings.get('directions', 'search'),
            sum(depths))
        self.search = search

        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, dims[0], 4, 4), _ChannelsLast(), nn.LayerNorm(dims[0]))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            blocks = nn.Sequential(*[
                LocalVSSBlock(
                    dim,
                    LocalSS2D(dim, block_dirs[first + j], search, settings['d_state'],
                              settings['ssm_ratio'],
                              official_vertical_quirk=official_vertical_quirk),
                    rates[first + j], with_cp) for j in range(depth)
            ])
            downsample = PatchMerging2D(dim, dims[i + 1]) \
                if i < self.num_stages - 1 else nn.Identity()
            self.layers.append(LocalVMambaStage(blocks, downsample))
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', nn.LayerNorm(dims[i]))
        self._freeze_stages()

    def forward(self, x: torch.Tensor):
        self.check_input(x, min_size=16)
        return self.forward_stages(self.patch_embed(x), 'blocks')

    def stem_and_stages(self):
        return self.patch_embed, list(self.layers)


class _ChannelsLast(nn.Module):
    """NCHW -> NHWC (``patch_embed.1`` of the official stem; no parameters)."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


# -- LocalVim detection neck (ViTDet's simple feature pyramid) ----------------------------------


class LN2d(LayerNorm2d):
    """Channel LayerNorm for NCHW maps as a config norm type (``dict(type='vssm_mm.LN2d')``).

    ``_abbr_`` gives mmcv's ConvModule the attribute name the official ViTDet ``LN2d`` gets.
    """
    _abbr_ = 'norm_layer'


if 'LN2d' not in MODELS.module_dict:
    MODELS.register_module('LN2d', module=LN2d)


class _ConvNorm(nn.Module):
    """Conv (no bias) + LN2d, named like mmcv's ConvModule with an LN2d norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              bias=False)
        self.norm_layer = LN2d(out_channels)

    def forward(self, x):
        return self.norm_layer(self.conv(x))


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """ViTDet's simple feature pyramid from one stride-16 map (LocalVim detection).

    Strides 4 (two 2x transposed convs), 8, 16 and 32 (max-pool), each through a 1x1 lateral
    and a 3x3 output conv with LN2d; extra levels by stride-2 subsampling.

    Args:
        backbone_channel (int): Channels of the backbone map.
        in_channels (list[int]): Channels of the four pyramid inputs
            (``[C/4, C/2, C, C]``).
        out_channels (int): Output channels.
        num_outs (int): Number of output levels (>= 4).
    """

    def __init__(self, backbone_channel: int, in_channels: Sequence[int], out_channels: int,
                 num_outs: int, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        c = backbone_channel
        expected = [c // 4, c // 2, c, c]
        if list(in_channels) != expected:
            raise ValueError(f'SimpleFPN: in_channels must be {expected} for backbone_channel '
                             f'{c}, got {list(in_channels)}')
        self.num_outs = num_outs
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2), LN2d(c // 2), nn.GELU(),
                                  nn.ConvTranspose2d(c // 2, c // 4, 2, 2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2))
        self.fpn3 = nn.Sequential(nn.Identity())
        self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
        self.lateral_convs = nn.ModuleList([_ConvNorm(ch, out_channels, 1) for ch in in_channels])
        self.fpn_convs = nn.ModuleList(
            [_ConvNorm(out_channels, out_channels, 3) for _ in in_channels])

    def forward(self, x) -> tuple:
        if isinstance(x, (tuple, list)):
            x = x[-1]
        inputs = [self.fpn1(x), self.fpn2(x), self.fpn3(x), self.fpn4(x)]
        outs = [fpn(lateral(feat)) for feat, lateral, fpn in
                zip(inputs, self.lateral_convs, self.fpn_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
