"""One linear operator for every scan and merge: a gather-sum driven by an index table.

A :class:`GatherTable` describes ``out[b, r, c, j] = sum_m src[b, s, c, p]`` where
``(s, p) = divmod(table[r, m, j], P)`` and entries equal to ``-1`` contribute zero. ``src`` has
shape (B, S, C, P) and ``out`` has shape (B, R, C, J). Scans are tables with M = 1 (one source
per token); merges are the *adjoint* tables (one column per (direction, position) that lands on a
pixel), computed once by inverting the scan table. Because the backward of a gather-sum is the
gather-sum of the adjoint table, gradients are exact for any map size, padding or duplication, and
no atomics are needed (results are deterministic).
"""
import os
from typing import Dict, Optional

import torch

BACKENDS = ('auto', 'torch', 'triton', 'cpu')


class GatherTable:
    """An index table (R, M, J) over a source of S rows of length P (see the module docstring).

    Args:
        table: int64 tensor (R, M, J) with entries in [-1, S * P).
        src_rows: S.
        src_len: P.
    """

    def __init__(self, table: torch.Tensor, src_rows: int, src_len: int):
        if table.dim() != 3:
            raise ValueError(f'table must be (R, M, J), got shape {tuple(table.shape)}')
        self.table = table.to(torch.int64).contiguous()
        self.src_rows = int(src_rows)
        self.src_len = int(src_len)
        self.out_rows, self.multiplicity, self.out_len = (int(n) for n in self.table.shape)
        self.has_padding = bool((self.table < 0).any())
        self._adjoint: Optional['GatherTable'] = None
        self._device_cache: Dict[tuple, torch.Tensor] = {}

    def __repr__(self):
        return (f'GatherTable(src=({self.src_rows}, {self.src_len}) -> '
                f'out=({self.out_rows}, {self.out_len}), multiplicity={self.multiplicity})')

    def adjoint(self) -> 'GatherTable':
        """The table of the adjoint (transposed) linear map; computed once and cached."""
        if self._adjoint is None:
            self._adjoint = _invert(self)
            self._adjoint._adjoint = self
        return self._adjoint

    def for_torch(self, device: torch.device) -> torch.Tensor:
        """Flat (R * M * J) index on `device` where -1 points at an appended zero column."""
        key = ('torch', device)
        if key not in self._device_cache:
            flat = self.table.reshape(-1)
            if self.has_padding:
                zero_column = self.src_rows * self.src_len
                flat = torch.where(flat < 0, torch.full_like(flat, zero_column), flat)
            self._device_cache[key] = flat.to(device)
        return self._device_cache[key]

    def for_triton(self, device: torch.device) -> torch.Tensor:
        """The table as int32 (half the bytes to read) on `device`."""
        key = ('triton', device)
        if key not in self._device_cache:
            if self.src_rows * self.src_len >= 2 ** 31:
                raise ValueError('scan order too large for int32 tables')
            self._device_cache[key] = self.table.to(torch.int32).to(device)
        return self._device_cache[key]


def _invert(table: GatherTable) -> GatherTable:
    """Build the adjoint table: for every source cell, the output cells that read it."""
    num_rows, mult, length = table.out_rows, table.multiplicity, table.out_len
    flat = table.table.reshape(-1)
    out_cell = (torch.arange(num_rows, dtype=torch.int64).view(-1, 1, 1) * length
                + torch.arange(length, dtype=torch.int64).view(1, 1, -1))
    out_cell = out_cell.expand(num_rows, mult, length).reshape(-1)
    valid = flat >= 0
    src_cell, out_cell = flat[valid], out_cell[valid]
    # stable sort: the contributions to one cell are summed in the order (row, m, position)
    src_cell, perm = torch.sort(src_cell, stable=True)
    out_cell = out_cell[perm]
    num_cells = table.src_rows * table.src_len
    counts = torch.bincount(src_cell, minlength=num_cells)
    adj_mult = max(1, int(counts.max())) if counts.numel() else 1
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(src_cell.numel(), dtype=torch.int64) - starts[src_cell]
    adj = torch.full((adj_mult, num_cells), -1, dtype=torch.int64)
    adj[rank, src_cell] = out_cell
    adj = adj.view(adj_mult, table.src_rows, table.src_len).permute(1, 0, 2)
    return GatherTable(adj, src_rows=num_rows, src_len=length)


# ------------------------------------------------------------------------------------------------
# backends


def _gather_sum_torch(src: torch.Tensor, table: GatherTable) -> torch.Tensor:
    batch, src_rows, channels, src_len = src.shape
    flat = src.permute(0, 2, 1, 3).reshape(batch, channels, src_rows * src_len)
    if table.has_padding:
        flat = torch.cat([flat, flat.new_zeros(batch, channels, 1)], dim=2)
    out = flat.index_select(2, table.for_torch(src.device))
    out = out.view(batch, channels, table.out_rows, table.multiplicity, table.out_len)
    if table.multiplicity == 1:
        out = out.squeeze(3)
    elif src.dtype in (torch.float16, torch.bfloat16):
        out = out.sum(3, dtype=torch.float32).to(src.dtype)  # round once, as the kernel does
    else:
        out = out.sum(3)
    return out.permute(0, 2, 1, 3).contiguous()


def _cpu_extension():
    """``vssm_mm._C_cpu`` when it is built (with its gather-sum), else None."""
    from vssm_mm.ops.selective_scan.cpu_backend import extension_with
    return extension_with('gather_sum')


def cpu_available() -> bool:
    """Whether the compiled CPU gather-sum (``vssm_mm._C_cpu``, csrc/cpu/) is built."""
    return _cpu_extension() is not None


def triton_available() -> bool:
    from . import triton_gather
    return triton_gather.AVAILABLE


def _interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """Map 'auto' to a concrete backend and check that the requested one can run."""
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; choose one of {BACKENDS}')
    if backend == 'auto':
        if tensor.is_cuda:
            return 'triton' if triton_available() else 'torch'
        # The compiled op is opaque to torch.compile, which traces the torch path instead.
        if tensor.device.type == 'cpu' and not torch.compiler.is_compiling() and \
                cpu_available():
            return 'cpu'
        return 'torch'
    if backend == 'cpu':
        if not cpu_available():
            raise RuntimeError("backend='cpu' needs the compiled CPU extension vssm_mm._C_cpu "
                               '(built by `pip install -e . --no-build-isolation` with a C++ '
                               "compiler); use backend='torch' or 'auto' otherwise")
        if tensor.device.type != 'cpu':
            raise RuntimeError(f"backend='cpu' runs on CPU tensors, got {tensor.device}; use "
                               "backend='triton' or 'auto'")
    if backend == 'triton':
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton); "
                               "use backend='torch' or 'auto' otherwise")
        if not tensor.is_cuda and not _interpreting():
            raise RuntimeError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set "
                               'before triton is imported to run the kernel on CPU tensors '
                               '(slow; for tests)')
    return backend


def gather_sum(src: torch.Tensor, table: GatherTable, backend: str = 'torch') -> torch.Tensor:
    """Apply `table` to `src` (B, S, C, P) without autograd; returns a contiguous (B, R, C, J)."""
    if backend == 'triton' and src.is_floating_point():
        from .triton_gather import gather_sum_triton
        return gather_sum_triton(src, table)
    if backend == 'cpu' and src.is_floating_point():
        return _cpu_extension().gather_sum(src, table.table)
    return _gather_sum_torch(src, table)


class _GatherSum(torch.autograd.Function):
    """Gather-sum whose backward is the gather-sum of the adjoint table (so it is twice
    differentiable, and scan/merge are each other's backward by construction)."""

    @staticmethod
    def forward(ctx, src, table, backend):
        ctx.table, ctx.backend = table, backend
        return gather_sum(src, table, backend)

    @staticmethod
    def backward(ctx, grad_out):
        return _GatherSum.apply(grad_out, ctx.table.adjoint(), ctx.backend), None, None


def apply_table(src: torch.Tensor, table: GatherTable, backend: str = 'auto') -> torch.Tensor:
    """Differentiable gather-sum of `src` (B, S, C, P) with `table` -> (B, R, C, J)."""
    if src.dim() != 4 or src.shape[1] != table.src_rows or src.shape[3] != table.src_len:
        raise ValueError(f'{table} expects a source (B, {table.src_rows}, C, {table.src_len}), '
                         f'got {tuple(src.shape)}')
    backend = resolve_backend(backend, src)
    if torch.jit.is_tracing():
        # jit cannot record a Python op whose argument is a table object; the plain index
        # ops trace fine (FLOP counters and exporters use this path; values are identical).
        return _gather_sum_torch(src, table)
    return _GatherSum.apply(src, table, backend)
