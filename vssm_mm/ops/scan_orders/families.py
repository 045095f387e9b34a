"""The scan orders of the four families, as thin helpers over :class:`ScanOrder`.

Direction k of every helper is the k-th entry of its direction tuple below; per-direction
parameters of converted checkpoints (``x_proj_weight[k]``, ``dt_projs_*[k]``, rows
``k*C:(k+1)*C`` of ``A_logs`` / ``Ds``) are indexed by that k.
"""
from typing import Sequence, Tuple, Union

import torch

from .order import get_scan_order

#: VMamba cross-scan (also GroupMamba's four groups): row-major, column-major, both reversed.
CROSS2D_DIRECTIONS = ('h', 'v', 'h_flip', 'v_flip')
#: EfficientVMamba ES2D (step 2): (even row, even col) row-major, (odd, even) column-major,
#: (even, odd) row-major, (odd, odd) column-major; no reversed sequences.
ATROUS_DIRECTIONS = ('sub2_00_h', 'sub2_10_v', 'sub2_01_h', 'sub2_11_v')
#: LocalMamba's eight candidates in canonical order (searched lists are 4-subsets of it).
LOCALMAMBA_DIRECTIONS = ('h', 'h_flip', 'v', 'v_flip', 'w2', 'w2_flip', 'w7', 'w7_flip')
#: MSVMamba: the full-resolution direction -> the ONE low-resolution sequence made of the three
#: other directions, concatenated in the order horizontal, horizontal reversed, vertical,
#: vertical reversed (MSVMamba v2 ``full_res_index`` 1..4 = 'h', 'h_flip', 'v', 'v_flip').
MULTISCALE_LOW_RES = {
    'h': 'h_flip+v+v_flip',  # the released models (master and v2)
    'h_flip': 'h+v+v_flip',
    'v': 'h+h_flip+v_flip',
    'v_flip': 'h+h_flip+v',
}

Size = Tuple[int, int]


def _size(x: torch.Tensor) -> Size:
    return int(x.shape[-2]), int(x.shape[-1])


# -- VMamba cross2d ----------------------------------------------------------------------------


def cross_scan(x: torch.Tensor, backend: str = 'auto') -> torch.Tensor:
    """VMamba cross-scan: (B, C, H, W) -> (B, 4, C, H*W), directions CROSS2D_DIRECTIONS."""
    return get_scan_order(CROSS2D_DIRECTIONS, *_size(x)).scan(x, backend)


def cross_merge(y: torch.Tensor, size: Size, backend: str = 'auto') -> torch.Tensor:
    """Adjoint of :func:`cross_scan`: (B, 4, C, H*W) or (B, 4*C, H*W) -> (B, C, H, W), summed."""
    return get_scan_order(CROSS2D_DIRECTIONS, *size).merge(y, backend=backend)


# -- EfficientVMamba atrous / skip sampling ----------------------------------------------------


def _atrous_directions(step: int) -> Tuple[str, ...]:
    if step != 2:
        raise ValueError(f'EfficientVMamba defines its four skip-sampling directions for step 2 '
                         f'only (got step={step}); for other steps build an order from '
                         "'sub<p>_<i><j>_h|v' names with get_scan_order")
    return ATROUS_DIRECTIONS


def atrous_scan(x: torch.Tensor, step: int = 2, backend: str = 'auto') -> torch.Tensor:
    """EfficientVMamba ES2D split: (B, C, H, W) -> (B, 4, C, ceil(H/2)*ceil(W/2)).

    Odd H / W are zero-padded at the bottom / right; the padded zeros are part of the sequences.
    """
    return get_scan_order(_atrous_directions(step), *_size(x)).scan(x, backend)


def atrous_merge(y: torch.Tensor, size: Size, step: int = 2, backend: str = 'auto') -> torch.Tensor:
    """Adjoint of :func:`atrous_scan`: scatter every token to its pixel, drop the padding.

    (B, 4, C, L') or (B, 4*C, L') -> (B, C, H, W). Every pixel belongs to one direction only,
    so this is also the exact inverse.
    """
    return get_scan_order(_atrous_directions(step), *size).merge(y, backend=backend)


# -- LocalMamba --------------------------------------------------------------------------------


def local_scan(x: torch.Tensor, directions: Union[str, Sequence[str]],
               backend: str = 'auto') -> torch.Tensor:
    """LocalMamba scan.

    Args:
        x: (B, C, H, W) (a channel-last view such as ``tokens.transpose(1, 2).view(B, C, H, W)``
            is fine).
        directions: one name (LocalVim: one sequence per call) or a list (LocalVMamba), from
            LOCALMAMBA_DIRECTIONS.

    Returns:
        (B, C, L_k) for one name; (B, K, C, L) for a list, each direction right-padded with zeros
        to the longest L (``get_scan_order(directions, H, W).lengths`` are the true lengths).
    """
    order = get_scan_order(directions, *_size(x))
    out = order.scan(x, backend)
    return out.squeeze(1) if isinstance(directions, str) else out


def local_merge(y: torch.Tensor, size: Size, directions: Union[str, Sequence[str]],
                sum_directions: bool = False, official_vertical_quirk: bool = False,
                backend: str = 'auto') -> torch.Tensor:
    """LocalMamba reverse: sequences back to row-major maps, padding dropped.

    Args:
        y: (B, C, L_k) for one name; (B, K, C, L) or (B, K*C, L) for a list.
        size: (H, W) of the map that was scanned.
        directions: as given to :func:`local_scan`.
        sum_directions: sum the K maps (LocalMamba applies its attention to each direction
            before summing, so the default keeps them apart).
        official_vertical_quirk: reproduce the official reverse of ``v`` / ``v_flip``, which for
            H != W is not the inverse of the scan. Only to match the released detection /
            segmentation checkpoints; the default is the correct inverse.

    Returns:
        (B, C, H, W) for one name or when summing; else (B, K, C, H, W).
    """
    order = get_scan_order(directions, *size, official_vertical_quirk=official_vertical_quirk)
    if isinstance(directions, str):
        return order.merge(y.unsqueeze(1), backend=backend)
    return order.merge(y, sum_directions=sum_directions, backend=backend)


# -- GroupMamba --------------------------------------------------------------------------------


def group_scan(x: torch.Tensor, directions: Sequence[str] = CROSS2D_DIRECTIONS,
               backend: str = 'auto') -> torch.Tensor:
    """One direction per channel group: (B, K*C, H, W) -> (B, K, C, H*W).

    Channel block k (``torch.chunk(x, K, dim=1)[k]``) is scanned with ``directions[k]``; for
    GroupMamba group k+1 uses CROSS2D_DIRECTIONS[k] (row-major, column-major, reversed, reversed).
    """
    num_groups = len(directions)
    batch, channels, height, width = x.shape
    if channels % num_groups:
        raise ValueError(f'group_scan: {channels} channels do not split into {num_groups} groups')
    order = get_scan_order(directions, height, width)
    return order.scan(x.view(batch, num_groups, channels // num_groups, height, width), backend)


def group_merge(y: torch.Tensor, size: Size, directions: Sequence[str] = CROSS2D_DIRECTIONS,
                backend: str = 'auto') -> torch.Tensor:
    """Adjoint (and inverse) of :func:`group_scan`.

    (B, K, C, H*W) or (B, K*C, H*W) -> (B, K*C, H, W).
    """
    out = get_scan_order(directions, *size).merge(y, sum_directions=False, backend=backend)
    return out.flatten(1, 2)


# -- MSVMamba ----------------------------------------------------------------------------------


def multiscale_low_res_size(height: int, width: int) -> Size:
    """Size of MSVMamba's low-resolution map (depthwise 7x7 conv, stride 2, padding 3)."""
    return (height - 1) // 2 + 1, (width - 1) // 2 + 1


def _low_res_direction(full_res_direction: str) -> str:
    if full_res_direction not in MULTISCALE_LOW_RES:
        raise ValueError(f'full_res_direction must be one of {tuple(MULTISCALE_LOW_RES)}, '
                         f'got {full_res_direction!r}')
    return MULTISCALE_LOW_RES[full_res_direction]


def multiscale_scan(x_full: torch.Tensor, x_low: torch.Tensor, full_res_direction: str = 'h',
                    backend: str = 'auto') -> Tuple[torch.Tensor, torch.Tensor]:
    """MSVMamba MS2D sequences.

    Args:
        x_full: (B, C, H, W) full-resolution map (after the 3x3 depthwise conv + SiLU).
        x_low: (B, C, H', W') low-resolution map (after the 7x7 stride-2 depthwise conv + SiLU).
        full_res_direction: the direction scanned at full resolution ('h' in every released
            model); the other three are scanned on x_low.

    Returns:
        (seq_full (B, C, H*W), seq_low (B, C, 3*H'*W')); seq_low is ONE sequence (one SSM
        parameter group, state carried across the three segments), segments in the order of
        MULTISCALE_LOW_RES.
    """
    full = get_scan_order(full_res_direction, *_size(x_full)).scan(x_full, backend).squeeze(1)
    low_order = get_scan_order(_low_res_direction(full_res_direction), *_size(x_low))
    return full, low_order.scan(x_low, backend).squeeze(1)


def multiscale_merge(y_full: torch.Tensor, y_low: torch.Tensor, full_size: Size, low_size: Size,
                     full_res_direction: str = 'h',
                     backend: str = 'auto') -> Tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of :func:`multiscale_scan`.

    Returns:
        (map_full (B, C, H, W), map_low (B, C, H', W')) where map_low is the SUM of the three
        low-resolution segments written back to their pixels. Upsampling map_low to (H, W)
        (bilinear in MSVMamba master, nearest in v2) and adding is the model's job.
    """
    full_order = get_scan_order(full_res_direction, *full_size)
    full = full_order.merge(y_full.unsqueeze(1), backend=backend)
    low_order = get_scan_order(_low_res_direction(full_res_direction), *low_size)
    return full, low_order.merge(y_low.unsqueeze(1), backend=backend)
