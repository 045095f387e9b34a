"""LocalVim (LocalMamba, arXiv 2403.09338): the plain, Vim-like LocalMamba backbone.

Patch 16, pre-norm blocks with a deferred residual (Mamba style), RoPE and an absolute position
embedding, or a class token in the middle of the sequence. Each block scans four directions
(``h``, ``v``, their flips, the 2x2 / 7x7 window scans ``w2`` / ``w7``; see
docs/scan_orders.md), each with its own causal depthwise conv1d and SSM parameters, stacked in
one grouped ``conv`` and one :class:`~vssm_mm.models.layers.SelectiveSSM`. Each block's
directions are data (``vssm_mm/models/layers/localmamba_blocks.py``): the lists the official
search found, or ``'search'`` for the supernet that scans all eight with learnable weights.

Official quirks are off by default and available by name: ``official_vertical_quirk`` (the
official reverse of ``v`` / ``v_flip`` is wrong for H != W, which every COCO / ADE20K run had) and
``official_shared_A_log`` (the official constructor builds a block's K ``A_log`` on one tensor;
see the docs).
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

from ..layers import DropPath, RMSNorm, SelectiveSSM, scan_sequences
from ..layers.localmamba_blocks import (DirectionMerge, apply_rotary, resize_token_table,
                                        resolve_directions, rotary_tables, square_grid)
from .base import VSSMBackboneMixin

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


class CausalDepthwiseConv1d(nn.Conv1d):
    """Depthwise conv1d of ``(B, C, L)`` whose output at ``t`` sees inputs ``t - k + 1 .. t``
    (Mamba's causal conv), ``L`` outputs. Parameters as ``nn.Conv1d(C, C, k, groups=C)``.

    On CPU tensors it is ``k`` shifted multiply-adds: oneDNN's depthwise conv1d took 7.7 ms for
    LocalVim-T's ``(8, 1536, 196)`` input on two cores, the shifted form 1.3 ms. Elsewhere,
    under autocast, and while FLOPs are counted (jit trace, meta tensors: the papers count the
    conv), ``F.conv1d``.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(channels, channels, kernel_size, groups=channels,
                         padding=kernel_size - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        if (x.device.type != 'cpu' or torch.jit.is_tracing()
                or torch.is_autocast_enabled('cpu')):
            return super().forward(x)[..., :length]
        weight = self.weight[:, 0].to(x.dtype)  # (C, k): weight[:, k - 1] meets x[t]
        k = weight.shape[1]
        last = weight[:, k - 1:]
        out = (torch.addcmul(self.bias.to(x.dtype)[:, None], x, last)
               if self.bias is not None else x * last)
        for i in range(k - 1):
            shift = k - 1 - i
            if shift < length:
                out[..., shift:].addcmul_(x[..., :length - shift], weight[:, i:i + 1])
        return out


class LocalVimMixer(nn.Module):
    """in_proj, K direction scans (one causal depthwise conv1d and SSM each), merge, out_proj.

    The K directions' convs are one grouped ``conv`` (``K * d`` channels) and their SSM
    parameters one :class:`SelectiveSSM`; each direction is gated by SiLU of its own scanned
    copy of ``z`` (Mamba's fused inner function).
    """

    def __init__(self, dim: int, directions: Sequence[str], search: bool = False,
                 d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 middle_cls: bool = False, official_vertical_quirk: bool = False,
                 official_shared_A_log: bool = False):
        super().__init__()
        self.directions = tuple(directions)
        self.middle_cls = middle_cls
        self.official_vertical_quirk = official_vertical_quirk
        self.official_shared_A_log = official_shared_A_log
        self.d_inner = d_inner = int(expand * dim)
        self.d_conv = d_conv
        channels = len(self.directions) * d_inner
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv = CausalDepthwiseConv1d(channels, d_conv)
        self.ssm = SelectiveSSM(len(self.directions), d_inner, d_state, math.ceil(dim / 16))
        self.direction_merge = DirectionMerge(len(self.directions), search, attn_channels=d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

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
        u = self.conv(u.reshape(batch, num_dirs * d_inner, seq_len))
        u = F.silu(u).view(batch, num_dirs, d_inner, seq_len)
        z = z.reshape(batch, num_dirs * d_inner, seq_len)
        if self.official_shared_A_log:
            # The official CPU model: every direction uses the last direction's A_log.
            ssm = self.ssm
            A_log = ssm.A_log[-d_inner:].repeat(num_dirs, 1)
            ys = scan_sequences(u, ssm.x_proj_weight, ssm.dt_proj_weight, ssm.dt_proj_bias,
                                A_log, ssm.D, z)
        else:
            ys = self.ssm(u, z)
        if self.middle_cls:
            cls_out = ys[..., cls_pos:cls_pos + 1]
            ys = torch.cat([ys[..., :cls_pos], ys[..., cls_pos + 1:]], dim=-1)
        outs = order.merge(ys, sum_directions=False).flatten(3)  # (B, K, d, H*W)
        if self.middle_cls:
            outs = torch.cat([outs[..., :cls_pos], cls_out, outs[..., cls_pos:]], dim=-1)
        y = self.direction_merge(outs.transpose(2, 3))
        return self.out_proj(y.to(x.dtype))


class LocalVimBlock(nn.Module):
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
    * otherwise ``out_norms[str(i)]`` (LayerNorm) of the stage's last mixer output, the official
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
        official_shared_A_log (bool): Every direction of a block uses the last direction's
            ``A_log``, as the official model built on the CPU does (see
            docs/models/localmamba.md).
        drop_path_rate (float, optional): Stochastic depth (default: the arch's).
        frozen_stages (int): Freeze patch/position embedding and the first stages.
        norm_eval (bool): Kept for config uniformity (no BatchNorm here).
        with_cp (bool): Activation checkpointing per block.
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
        settings = self.init_arch(arch, ('embed_dim', 'depth'), self.defaults)
        dim, depth = settings['embed_dim'], settings['depth']
        if depth < self.num_stages:
            raise ValueError(f'LocalVim needs depth >= {self.num_stages}, got {depth}')
        if out_type not in ('featmap', 'cls_token'):
            raise ValueError(f"out_type must be 'featmap' or 'cls_token', got {out_type!r}")
        if out_type == 'cls_token' and not settings['cls_token']:
            raise ValueError("out_type='cls_token' needs an arch with a class token ('tiny_mid')")
        self.embed_dim, self.depth = dim, depth
        self.dims = (dim, ) * self.num_stages
        self.init_outputs(self.num_stages, out_indices, frozen_stages, norm_eval)
        self.stage_ends = tuple((s + 1) * depth // self.num_stages - 1
                                for s in range(self.num_stages))
        self.out_type, self.final_norm = out_type, final_norm
        self.with_cp = with_cp
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
        rates = [0.0] + torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList([
            LocalVimBlock(
                dim,
                LocalVimMixer(dim, layer_dirs[i], search, settings['d_state'], settings['d_conv'],
                              settings['expand'], self.use_cls, official_vertical_quirk,
                              official_shared_A_log), _norm(norm_type, dim), rates[i])
            for i in range(depth)
        ])
        self.out_norms = nn.ModuleDict()
        for i in self.out_indices:
            if final_norm and i == self.num_stages - 1:
                self.norm_f = _norm(norm_type, dim)
                self.drop_path = DropPath(drop_path_rate)
            else:
                self.out_norms[str(i)] = nn.LayerNorm(dim)
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
        for index, layer in enumerate(self.blocks):
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
                    feat = self.out_norms[str(stage)](hidden)
                outs.append(self._format(feat, grid))
                if len(outs) == len(wanted):
                    break
        return tuple(outs)

    # -- init / freezing -----------------------------------------------------------------------

    def init_extra(self, module: nn.Module) -> None:
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    @torch.no_grad()
    def init_last(self) -> None:
        """The rest of the official model's effective initialisation (Vim's).

        After the shared rules (trunc-normal Linears, unit norms), each ``out_proj`` is re-drawn
        kaiming-uniform and divided by sqrt(depth), and the SSM projections are drawn like the
        official ``x_proj_k`` / ``dt_proj_k`` Linears, whose Mamba init the official
        ``segm_init_weights`` overwrites: trunc-normal(0.02) weights, zero bias.
        """
        for block in self.blocks:
            mixer = block.mixer
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            mixer.out_proj.weight.div_(math.sqrt(self.depth))
            nn.init.trunc_normal_(mixer.ssm.x_proj_weight, std=0.02)
            nn.init.trunc_normal_(mixer.ssm.dt_proj_weight, std=0.02)
            nn.init.zeros_(mixer.ssm.dt_proj_bias)
            mixer.ssm.reset_A_D()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

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
        for block in self.blocks:
            mixer = block.mixer
            d_inner, d_state = mixer.d_inner, mixer.ssm.d_state
            x_proj_out = mixer.ssm.x_proj_weight.shape[1]
            flops += mixer.in_proj.in_features * mixer.in_proj.out_features * length
            flops += (length + mixer.d_conv - 1) * d_inner * mixer.d_conv
            flops += length * d_inner * x_proj_out
            flops += length * mixer.ssm.dt_rank * d_inner
            flops += len(mixer.directions) * (5 * d_inner * length * d_state + 2 * d_inner * length)
            attn = mixer.direction_merge.channel_attn
            for linear in (attn.reduce, attn.expand):
                flops += linear.in_features * linear.out_features
            flops += length * mixer.out_proj.in_features * mixer.out_proj.out_features
            flops += length * mixer.out_proj.out_features
        return flops + dim * num_classes

    def stem_and_stages(self):
        bounds = (0, ) + tuple(end + 1 for end in self.stage_ends)
        stages = [nn.ModuleList(self.blocks[bounds[s]:bounds[s + 1]])
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
