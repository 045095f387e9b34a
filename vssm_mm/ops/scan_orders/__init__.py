"""Scan orders: how a (B, C, H, W) map becomes K token sequences and back.

An order is data: an index map (:class:`ScanOrder`, cached per map size by
:func:`get_scan_order`). Scan = gather, merge = its adjoint (a gather over the inverted table),
so every order is exact for any H, W (odd, non-square, padded) and each one's backward is the
other. Backends: torch (any device) and one Triton kernel (CUDA; sizes are runtime values).
See docs/scan_orders.md for the direction definitions of each family.
"""
from .directions import direction_indices
from .families import (ATROUS_DIRECTIONS, CROSS2D_DIRECTIONS, LOCALMAMBA_DIRECTIONS,
                       MULTISCALE_LOW_RES, atrous_merge, atrous_scan, cross_merge, cross_scan,
                       group_merge, group_scan, local_merge, local_scan, multiscale_low_res_size,
                       multiscale_merge, multiscale_scan)
from .gather import GatherTable, apply_table, triton_available
from .order import ScanOrder, get_scan_order

__all__ = [
    'ScanOrder', 'get_scan_order', 'direction_indices', 'GatherTable', 'apply_table',
    'triton_available',
    'CROSS2D_DIRECTIONS', 'ATROUS_DIRECTIONS', 'LOCALMAMBA_DIRECTIONS', 'MULTISCALE_LOW_RES',
    'cross_scan', 'cross_merge', 'atrous_scan', 'atrous_merge', 'local_scan', 'local_merge',
    'group_scan', 'group_merge', 'multiscale_scan', 'multiscale_merge', 'multiscale_low_res_size',
]
