"""The direction vocabulary: a direction name -> a sequence of pixel indices.

A *direction* turns an H x W map into one token sequence. It is described by two int64 vectors of
the same length:

* ``scan``: ``scan[l]`` is the row-major pixel index (``h * W + w``) read at sequence position
  ``l``, or ``-1`` for a zero-padding token;
* ``merge``: the pixel that sequence position ``l`` is written back to by the merge (``-1``: the
  token is dropped). It equals ``scan`` for every direction, except for LocalMamba's vertical
  directions when the official non-square quirk is requested.

Names (a name may join several segments with ``+`` into ONE sequence, e.g. ``'h_flip+v+v_flip'``,
MSVMamba's low-resolution sequence):

==================  ===========================================================================
``h``               row-major: left to right, rows top to bottom
``h_flip``          ``h`` reversed (starts bottom-right)
``v``               column-major: top to bottom, columns left to right (flatten of the transpose)
``v_flip``          ``v`` reversed
``w<k>``            LocalMamba local windows: zero-pad bottom/right to multiples of k, visit the
                    k x k windows row-major, and the pixels of each window row-major
``w<k>_flip``       ``w<k>`` reversed as a whole (padding cells keep their mirrored positions)
``sub<p>_<i><j>_h`` EfficientVMamba skip sampling: zero-pad bottom/right to multiples of p, take
                    the sub-grid ``[i::p, j::p]``, flatten it row-major; ``_v``: column-major.
                    An optional ``_flip`` suffix reverses the sequence.
==================  ===========================================================================
"""
import re
from typing import List, Tuple

import torch

_BASIC = ('h', 'h_flip', 'v', 'v_flip')
_WINDOW = re.compile(r'^w(\d+)(_flip)?$')
_SUBGRID = re.compile(r'^sub(\d+)_(\d)(\d)_([hv])(_flip)?$')

VOCABULARY_HELP = ("valid segment names: 'h', 'h_flip', 'v', 'v_flip', 'w<k>', 'w<k>_flip' "
                   "(e.g. 'w2', 'w7_flip'), 'sub<p>_<i><j>_h|v[_flip]' (e.g. 'sub2_10_v'); "
                   "join segments with '+' to concatenate them into one sequence")


def _grid(height: int, width: int, pad_h: int = 0, pad_w: int = 0) -> torch.Tensor:
    """Row-major pixel indices of an H x W map, padded bottom/right with -1."""
    grid = torch.full((height + pad_h, width + pad_w), -1, dtype=torch.int64)
    grid[:height, :width] = torch.arange(height * width, dtype=torch.int64).view(height, width)
    return grid


def _column_major(height: int, width: int) -> torch.Tensor:
    return _grid(height, width).t().reshape(-1)


def _official_vertical_reverse_targets(height: int, width: int) -> torch.Tensor:
    """Where LocalMamba's official ``v`` reverse writes each un-flipped sequence position.

    The official reverse reads the column-major sequence s as if it were an (H, W) matrix and
    transposes it: out[a * H + b] = s[b * W + a]. Hence position l goes to (l % W) * H + l // W.
    This is the true inverse only when H == W.
    """
    pos = torch.arange(height * width, dtype=torch.int64)
    return (pos % width) * height + pos // width


def _segment(name: str, height: int, width: int,
             official_vertical_quirk: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scan, merge) index vectors of one segment."""
    if name in _BASIC:
        if name.startswith('h'):
            scan = torch.arange(height * width, dtype=torch.int64)
            merge = scan
        else:
            scan = _column_major(height, width)
            merge = (_official_vertical_reverse_targets(height, width)
                     if official_vertical_quirk else scan)
        if name.endswith('_flip'):
            scan, merge = scan.flip(0), merge.flip(0)
        return scan, merge

    match = _WINDOW.match(name)
    if match:
        k = int(match.group(1))
        if k < 1:
            raise ValueError(f'window size must be >= 1, got {name!r}')
        rows, cols = -(-height // k), -(-width // k)
        grid = _grid(height, width, rows * k - height, cols * k - width)
        scan = grid.view(rows, k, cols, k).permute(0, 2, 1, 3).reshape(-1)
        if match.group(2):
            scan = scan.flip(0)
        return scan, scan

    match = _SUBGRID.match(name)
    if match:
        step, i, j = int(match.group(1)), int(match.group(2)), int(match.group(3))
        if step < 1 or i >= step or j >= step:
            raise ValueError(f'{name!r}: need step >= 1 and offsets < step')
        rows, cols = -(-height // step), -(-width // step)
        grid = _grid(height, width, rows * step - height, cols * step - width)
        sub = grid[i::step, j::step]
        scan = (sub if match.group(4) == 'h' else sub.t()).reshape(-1)
        if match.group(5):
            scan = scan.flip(0)
        return scan, scan

    raise ValueError(f'unknown scan direction {name!r}; {VOCABULARY_HELP}')


def direction_indices(direction: str, height: int, width: int,
                      official_vertical_quirk: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return the (scan, merge) int64 index vectors of one direction (see the module docstring).

    Args:
        direction: a name such as ``'v_flip'``, ``'w7'``, ``'sub2_10_v'`` or ``'h_flip+v+v_flip'``.
        height: map height H (>= 1).
        width: map width W (>= 1).
        official_vertical_quirk: make the merge of ``v``/``v_flip`` segments reproduce
            LocalMamba's official reverse, which is wrong for H != W (see docs/scan_orders.md).
    """
    if height < 1 or width < 1:
        raise ValueError(f'scan orders need H, W >= 1, got {height} x {width}')
    if not isinstance(direction, str) or not direction:
        raise ValueError(f'a direction must be a non-empty string; {VOCABULARY_HELP}')
    scans: List[torch.Tensor] = []
    merges: List[torch.Tensor] = []
    for name in direction.split('+'):
        scan, merge = _segment(name.strip(), height, width, official_vertical_quirk)
        scans.append(scan)
        merges.append(merge)
    return torch.cat(scans), torch.cat(merges)
