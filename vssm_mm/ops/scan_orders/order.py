"""`ScanOrder`: K directions over an H x W map, stored as index maps.

Layouts (C = channels, K = number of directions, L = sequence length):

* ``scan(x)`` with x (B, C, H, W) -> (B, K, C, L): every direction reads all C channels
  (VMamba / EfficientVMamba / LocalVMamba / MSVMamba). The result is contiguous, so
  ``.view(B, K * C, L)`` is the (B, K*C, L) layout the selective scan consumes (channel k*C + c
  belongs to direction k, i.e. to ``A_logs[k*C:(k+1)*C]``, ``dt_projs_*[k]``, ...).
* ``scan(x)`` with x (B, K, C, H, W) -> (B, K, C, L): "grouped": direction k reads only channel
  block k (GroupMamba; ``x.view(B, K, C, H, W)`` of a (B, K*C, H, W) map).
* ``merge(y)`` with y (B, K, C, L) or (B, K*C, L) -> (B, C, H, W): the sum over directions of
  each direction's tokens written back to their pixels; the exact adjoint of the first scan.
* ``merge(y, sum_directions=False)`` -> (B, K, C, H, W): one map per direction; the exact adjoint
  of the grouped scan.

Sequences of different lengths (LocalMamba windows with padding) are right-padded with zeros to
the longest one (``lengths`` keeps the true lengths); padding tokens are dropped by the merge.
"""
import functools
from typing import Sequence, Tuple, Union

import torch

from .directions import direction_indices
from .gather import GatherTable, apply_table

Directions = Union[str, Sequence[str]]


class ScanOrder:
    """K scan directions over an H x W map (build with :func:`get_scan_order`, which caches).

    Attributes:
        directions: the K direction names (see :mod:`.directions` for the vocabulary).
        height, width: the map size.
        index: int64 (K, L); ``index[k, l]`` is the row-major pixel read at position l of
            direction k, -1 for a zero token.
        merge_index: int64 (K, L); the pixel position l of direction k is written back to by
            ``merge`` (-1: dropped). Equal to ``index`` unless ``official_vertical_quirk``.
        lengths: the true length of each direction (before right-padding to L).
    """

    def __init__(self, directions: Tuple[str, ...], height: int, width: int,
                 official_vertical_quirk: bool = False):
        if not directions:
            raise ValueError('a scan order needs at least one direction')
        self.directions = tuple(directions)
        self.height, self.width = int(height), int(width)
        self.official_vertical_quirk = bool(official_vertical_quirk)
        pairs = [direction_indices(d, self.height, self.width, self.official_vertical_quirk)
                 for d in self.directions]
        self.lengths = tuple(int(scan.numel()) for scan, _ in pairs)
        seq_len = max(self.lengths)
        self.index = torch.full((len(pairs), seq_len), -1, dtype=torch.int64)
        self.merge_index = torch.full((len(pairs), seq_len), -1, dtype=torch.int64)
        for k, (scan, merge) in enumerate(pairs):
            self.index[k, :scan.numel()] = scan
            self.merge_index[k, :merge.numel()] = merge
        self._tables = {}

    # -- description -------------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return self.index.shape[0]

    @property
    def seq_len(self) -> int:
        return self.index.shape[1]

    @property
    def num_pixels(self) -> int:
        return self.height * self.width

    @property
    def is_adjoint(self) -> bool:
        """True when merge is the exact adjoint of scan (always, unless the LocalMamba quirk)."""
        return torch.equal(self.index, self.merge_index)

    def __repr__(self):
        quirk = ', official_vertical_quirk=True' if self.official_vertical_quirk else ''
        return (f'ScanOrder({self.directions}, H={self.height}, W={self.width}, '
                f'K={self.num_directions}, L={self.seq_len}{quirk})')

    # -- tables ------------------------------------------------------------------------------

    def _gather_table(self, index: torch.Tensor, grouped: bool) -> GatherTable:
        if not grouped:
            return GatherTable(index.unsqueeze(1), src_rows=1, src_len=self.num_pixels)
        offset = torch.arange(self.num_directions, dtype=torch.int64).view(-1, 1) * self.num_pixels
        table = torch.where(index >= 0, index + offset, index)
        return GatherTable(table.unsqueeze(1), src_rows=self.num_directions,
                           src_len=self.num_pixels)

    def table(self, kind: str) -> GatherTable:
        """'scan', 'scan_grouped', 'merge' (summed) or 'merge_split' gather table (cached)."""
        if kind not in self._tables:
            if kind == 'scan':
                table = self._gather_table(self.index, grouped=False)
            elif kind == 'scan_grouped':
                table = self._gather_table(self.index, grouped=True)
            elif kind in ('merge', 'merge_split'):
                grouped = kind == 'merge_split'
                scan_kind = 'scan_grouped' if grouped else 'scan'
                if self.is_adjoint:
                    table = self.table(scan_kind).adjoint()
                else:
                    table = self._gather_table(self.merge_index, grouped).adjoint()
            else:
                raise ValueError(f"unknown table kind {kind!r}; use 'scan', 'scan_grouped', "
                                 "'merge' or 'merge_split'")
            self._tables[kind] = table
        return self._tables[kind]

    # -- operators ---------------------------------------------------------------------------

    def _check_map(self, x: torch.Tensor):
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(f'{self} got a map of spatial size {tuple(x.shape[-2:])}; build the '
                             'order for that size with get_scan_order(directions, H, W)')

    def scan(self, x: torch.Tensor, backend: str = 'auto') -> torch.Tensor:
        """(B, C, H, W) -> (B, K, C, L), or grouped (B, K, C, H, W) -> (B, K, C, L).

        Args:
            x: the map; any strides (e.g. a channel-last view) are accepted.
            backend: 'auto' (Triton for CUDA tensors when available; for CPU tensors the
                compiled kernel of ``vssm_mm._C_cpu`` when built; else torch), 'torch',
                'triton' or 'cpu'.
        """
        self._check_map(x)
        if x.dim() == 4:
            src, kind = x.flatten(2).unsqueeze(1), 'scan'
        elif x.dim() == 5 and x.shape[1] == self.num_directions:
            src, kind = x.flatten(3), 'scan_grouped'
        else:
            raise ValueError(f'{self}.scan expects (B, C, H, W) or grouped '
                             f'(B, {self.num_directions}, C, H, W), got {tuple(x.shape)}')
        return apply_table(src, self.table(kind), backend)

    def merge(self, y: torch.Tensor, sum_directions: bool = True,
              backend: str = 'auto') -> torch.Tensor:
        """(B, K, C, L) or (B, K*C, L) -> (B, C, H, W) (summed) or (B, K, C, H, W).

        Args:
            y: per-direction sequences (what the selective scan returns).
            sum_directions: sum the K maps (adjoint of the shared scan) or keep them apart
                (adjoint of the grouped scan).
            backend: see :meth:`scan`.
        """
        num_dirs, seq_len = self.num_directions, self.seq_len
        if y.dim() == 3 and y.shape[1] % num_dirs == 0:
            y = y.reshape(y.shape[0], num_dirs, y.shape[1] // num_dirs, y.shape[2])
        if y.dim() != 4 or y.shape[1] != num_dirs or y.shape[3] != seq_len:
            raise ValueError(f'{self}.merge expects (B, {num_dirs}, C, {seq_len}) or '
                             f'(B, {num_dirs}*C, {seq_len}), got {tuple(y.shape)}')
        out = apply_table(y, self.table('merge' if sum_directions else 'merge_split'), backend)
        batch, _, channels, _ = out.shape
        if sum_directions:
            return out.view(batch, channels, self.height, self.width)
        return out.view(batch, num_dirs, channels, self.height, self.width)


def _normalize(directions: Directions) -> Tuple[str, ...]:
    if isinstance(directions, str):
        return (directions,)
    return tuple(directions)


@functools.lru_cache(maxsize=128)
def _cached_order(directions: Tuple[str, ...], height: int, width: int,
                  official_vertical_quirk: bool) -> ScanOrder:
    return ScanOrder(directions, height, width, official_vertical_quirk)


def get_scan_order(directions: Directions, height: int, width: int,
                   official_vertical_quirk: bool = False) -> ScanOrder:
    """Return the (cached) :class:`ScanOrder` of `directions` on an H x W map.

    Args:
        directions: one name or a sequence of names, e.g. ``('h', 'v', 'h_flip', 'v_flip')``.
        height: H.
        width: W.
        official_vertical_quirk: LocalMamba only: merge ``v``/``v_flip`` with the official
            reverse, which is not the inverse of the scan when H != W.
    """
    return _cached_order(_normalize(directions), int(height), int(width),
                         bool(official_vertical_quirk))
