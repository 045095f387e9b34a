"""LocalMamba pieces shared by LocalVim and LocalVMamba.

* the searched scan directions of the released models (data) and
  :func:`resolve_directions`, which turns an arch's ``directions`` entry into per-layer lists;
* :class:`DirectionMerge`: the channel attention ("BiAttn") on every direction's output, then
  the sum over directions, or the supernet's softmax-weighted sum of
  normalised outputs (the learnable ``weights`` that the direction search reads);
* the 2D rotary embedding of LocalVim and bicubic resizing of per-token tables.
"""
import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from vssm_mm.ops.scan_orders import LOCALMAMBA_DIRECTIONS

from .attention import TokenChannelAttention

Directions = List[Tuple[str, ...]]


def _layers(text: str) -> Directions:
    """One line per layer, names separated by spaces (easier to proofread than nested lists)."""
    return [tuple(line.split()) for line in text.strip().splitlines()]


#: Per-layer directions of the released models (hunto/LocalMamba). Each entry
#: is a 4-subset of LOCALMAMBA_DIRECTIONS in canonical order; its position is the parameter index.
SEARCHED_DIRECTIONS = {
    # LocalVim-T, LocalVim-T middle-cls, LocalVim-S and every LocalVim dense config (20 layers).
    'localvim': _layers("""
        h v_flip w7 w7_flip
        h_flip w2_flip w7 w7_flip
        h h_flip v w7
        h h_flip v v_flip
        h h_flip v v_flip
        h h_flip v v_flip
        h_flip v v_flip w7
        h_flip v v_flip w2_flip
        h h_flip v v_flip
        h h_flip v v_flip
        h v v_flip w2
        h v v_flip w2_flip
        h h_flip v_flip w7
        h_flip v v_flip w2
        h h_flip v v_flip
        h v w2 w2_flip
        v v_flip w2 w7
        h h_flip v w2
        h h_flip w2_flip w7
        v v_flip w2 w2_flip
        """),
    # LocalVim-T* / LocalVim-S* of the paper (no search): the same four directions everywhere.
    'localvim_unsearched': [('h', 'h_flip', 'w2', 'w2_flip')] * 20,
    # LocalVMamba-T, blocks of stages 1-4 in order (2 + 2 + 9 + 2).
    'localvmamba_tiny': _layers("""
        h h_flip w7 w7_flip
        h_flip v_flip w2 w2_flip
        h_flip v_flip w2_flip w7
        h_flip v v_flip w2
        h h_flip v_flip w2_flip
        h_flip v_flip w2 w2_flip
        h w2_flip w7 w7_flip
        h h_flip v v_flip
        h v_flip w7 w7_flip
        h_flip v w2 w7_flip
        v v_flip w2 w7_flip
        h h_flip v_flip w2_flip
        v_flip w2_flip w7 w7_flip
        h_flip v_flip w2_flip w7_flip
        h_flip v w7 w7_flip
        """),
    # LocalVMamba-S (2 + 2 + 27 + 2).
    'localvmamba_small': _layers("""
        h v v_flip w7_flip
        h h_flip v w7
        h_flip v v_flip w7
        h_flip v w2_flip w7
        h_flip v w2_flip w7
        h_flip v_flip w2 w7_flip
        h_flip v v_flip w7
        h v v_flip w7
        h v v_flip w7
        h v v_flip w7_flip
        h h_flip v v_flip
        h v v_flip w2
        v v_flip w2_flip w7
        h h_flip v w2
        h_flip v v_flip w7_flip
        h h_flip v v_flip
        h v v_flip w7_flip
        h v v_flip w7_flip
        h h_flip v_flip w7
        h_flip v_flip w2_flip w7
        h_flip v v_flip w7_flip
        v v_flip w7 w7_flip
        h v v_flip w7_flip
        h_flip v v_flip w2
        h v v_flip w2_flip
        h h_flip v w7
        h h_flip w7 w7_flip
        h v_flip w2 w2_flip
        h v_flip w2 w7
        h v v_flip w7_flip
        h_flip v w2_flip w7
        h_flip v_flip w7 w7_flip
        h v w7 w7_flip
        """),
}

#: ``directions='search'``: every layer scans all eight candidates (the supernet).
SEARCH = 'search'


def resolve_directions(directions: Union[str, Sequence[Sequence[str]]],
                       num_layers: int) -> Tuple[Directions, bool]:
    """Per-layer direction tuples and whether this is the search supernet.

    Args:
        directions: ``'search'`` (all eight per layer, learnable weights), the name of a list in
            :data:`SEARCHED_DIRECTIONS`, or an explicit list with one entry per layer (e.g. the
            output of ``tools/export_local_directions.py``).
        num_layers: The number of layers (LocalVim) or blocks over all stages (LocalVMamba).
    """
    if isinstance(directions, str):
        if directions == SEARCH:
            return [LOCALMAMBA_DIRECTIONS] * num_layers, True
        if directions not in SEARCHED_DIRECTIONS:
            raise ValueError(f'unknown directions {directions!r}; use {SEARCH!r}, one of '
                             f'{sorted(SEARCHED_DIRECTIONS)} or a list with one entry per layer')
        directions = SEARCHED_DIRECTIONS[directions]
    layers = [tuple([d] if isinstance(d, str) else d) for d in directions]
    if len(layers) != num_layers:
        raise ValueError(f'directions has {len(layers)} entries but the model has {num_layers} '
                         'layers (blocks); give one list of direction names per layer')
    for i, names in enumerate(layers):
        unknown = [n for n in names if n not in LOCALMAMBA_DIRECTIONS]
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(f'directions of layer {i} {names}: need distinct names from '
                             f'{LOCALMAMBA_DIRECTIONS}')
    return layers, False


class DirectionMerge(nn.Module):
    """Combine K per-direction outputs ``(B, K, L, C)`` into ``(B, L, C)``.

    Released models: ``channel_attn`` on each direction, then a plain sum. Search supernet:
    ``channel_attn``, then a LayerNorm without affine parameters per direction, weighted by
    ``softmax(weights)`` (``weights`` has the official shape ``(K, 1, 1, 1)``).

    Args:
        num_directions: K.
        search: Learnable direction weights (the supernet).
        attn_channels: ``C``: one channel attention shared by the directions.
    """

    def __init__(self, num_directions: int, search: bool, attn_channels: int):
        super().__init__()
        self.search = search
        if search:
            self.weights = nn.Parameter(1e-3 * torch.randn(num_directions, 1, 1, 1))
        self.channel_attn = TokenChannelAttention(attn_channels)

    def direction_probs(self) -> torch.Tensor:
        """Softmax over the direction weights (supernet only)."""
        return self.weights.detach().view(-1).softmax(0)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        batch, k, length, channels = xs.shape
        # One attention module shared by the directions, applied to each separately.
        xs = self.channel_attn(xs.reshape(batch * k, length, channels))
        xs = xs.view(batch, k, length, channels)
        if not self.search:
            return xs.sum(1)
        xs = F.layer_norm(xs, (channels, ))
        weights = self.weights.softmax(0).view(1, k, 1, 1).to(xs.dtype)
        return (xs * weights).sum(1)


# -- LocalVim's rotary embedding and table resizing --------------------------------------------


def rotary_tables(dim: int, grid: Tuple[int, int], pt_seq_len: int = 14,
                  theta: float = 10000.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables ``(H*W, dim)`` of EVA-02's 2D rotary embedding (as in Vim).

    Channels ``[0, dim/2)`` rotate with the row index, ``[dim/2, dim)`` with the column index;
    each frequency ``theta^(-2k/(dim/2))`` is used for an adjacent channel pair. Positions are
    ``arange(S) / S * pt_seq_len`` (the official code builds the model's own grid this way).
    """
    half = dim // 2
    freqs = 1.0 / (theta**(torch.arange(0, half, 2)[:half // 2].float() / half))

    def axis(size):
        t = torch.arange(size) / size * pt_seq_len
        return torch.einsum('i,f->if', t, freqs).repeat_interleave(2, dim=-1)

    rows, cols = axis(grid[0]), axis(grid[1])
    table = torch.cat([rows[:, None, :].expand(-1, grid[1], -1),
                       cols[None, :, :].expand(grid[0], -1, -1)], dim=-1)
    table = table.reshape(-1, table.shape[-1])
    return table.cos(), table.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Adjacent channel pairs (x0, x1) -> (-x1, x0)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def resize_token_table(table: torch.Tensor, src: Tuple[int, int],
                       dst: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (``align_corners=False``) of a row-major ``(..., H*W, C)`` table."""
    if tuple(src) == tuple(dst):
        return table
    lead = table.shape[:-2]
    channels = table.shape[-1]
    grid = table.reshape(-1, src[0], src[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(dst), mode='bicubic', align_corners=False)
    out = grid.permute(0, 2, 3, 1).reshape(*lead, dst[0] * dst[1], channels)
    return out.to(table.dtype)


def square_grid(num_tokens: int) -> Tuple[int, int]:
    """The official checkpoints store square grids; recover the side from the token count."""
    side = int(math.isqrt(num_tokens))
    if side * side != num_tokens:
        raise ValueError(f'cannot infer a square token grid from {num_tokens} tokens')
    return side, side
