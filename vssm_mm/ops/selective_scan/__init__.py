"""Selective scan (Mamba-1 S6) with reference, CPU, Triton and CUDA backends.

See ``docs/selective_scan.md`` for semantics, backends and benchmarks.
"""
from .backends import BACKENDS, ENV_VAR, available_backends, resolve_backend
from .flops import (SCAN_FLOP_HANDLES, selective_scan_flop_jit,
                    selective_scan_flops)
from .interface import SelectiveScanFn, selective_scan
from .naive import selective_scan_naive

__all__ = [
    'selective_scan', 'selective_scan_naive', 'available_backends',
    'resolve_backend', 'BACKENDS', 'ENV_VAR', 'SelectiveScanFn',
    'selective_scan_flop_jit', 'selective_scan_flops', 'SCAN_FLOP_HANDLES'
]
