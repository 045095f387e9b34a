"""Triton kernel for the table-driven gather-sum behind every scan and merge.

One kernel serves every scan order, direction count, padding rule and map size: the index table
is data, and all sizes and strides are runtime arguments that are not specialised on, so a new
image size (mmdet / mmseg batches) never triggers a recompilation. Each program handles a
BLOCK_C x BLOCK_J tile of one (batch, output row); it reads the table once per tile and gathers
the M contributions of every output cell, accumulating in fp32 (fp64 for double inputs).
Sources may be arbitrary strided views (e.g. channel-last maps); outputs are contiguous.
"""
import torch

try:
    import triton
    import triton.language as tl
    AVAILABLE = True
except ImportError:  # the torch backend is used instead
    triton = tl = None
    AVAILABLE = False

BLOCK_C = 4
BLOCK_J = 128

if AVAILABLE:

    @triton.jit(do_not_specialize=[
        'num_rows', 'channels', 'out_len', 'mult', 'src_len', 'num_j_blocks', 'num_c_blocks',
        'src_sb', 'src_ss', 'src_sc', 'src_sp', 'out_sb', 'out_sr', 'out_sc'])
    def _gather_sum_kernel(src_ptr, table_ptr, out_ptr,
                           num_rows, channels, out_len, mult, src_len,
                           num_j_blocks, num_c_blocks,
                           src_sb, src_ss, src_sc, src_sp,
                           out_sb, out_sr, out_sc,
                           ACC_DTYPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        j_block = pid % num_j_blocks
        rest = pid // num_j_blocks
        c_block = rest % num_c_blocks
        rest = rest // num_c_blocks
        row = rest % num_rows
        batch = rest // num_rows

        offs_j = j_block * BLOCK_J + tl.arange(0, BLOCK_J)
        offs_c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_j = offs_j < out_len
        mask_c = offs_c < channels
        chan_off = offs_c.to(tl.int64)[:, None] * src_sc

        acc = tl.zeros((BLOCK_C, BLOCK_J), dtype=ACC_DTYPE)
        for m in range(mult):
            entry = tl.load(table_ptr + (row * mult + m) * out_len + offs_j, mask=mask_j, other=-1)
            entry = entry.to(tl.int64)
            valid = mask_j & (entry >= 0)
            entry = tl.where(valid, entry, 0)
            src_row = entry // src_len
            pos = entry - src_row * src_len
            ptrs = src_ptr + batch * src_sb + (src_row * src_ss + pos * src_sp)[None, :] + chan_off
            vals = tl.load(ptrs, mask=mask_c[:, None] & valid[None, :], other=0.0)
            acc += vals.to(ACC_DTYPE)

        out_ptrs = (out_ptr + batch * out_sb + row * out_sr
                    + offs_c.to(tl.int64)[:, None] * out_sc + offs_j[None, :])
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_c[:, None] & mask_j[None, :])


def gather_sum_triton(src: torch.Tensor, table) -> torch.Tensor:
    """Triton gather-sum of `src` (B, S, C, P) with a GatherTable -> contiguous (B, R, C, J)."""
    if not AVAILABLE:
        raise RuntimeError('triton is not installed; use the torch backend')
    batch, _, channels, _ = src.shape
    out = src.new_empty((batch, table.out_rows, channels, table.out_len))
    if out.numel() == 0:
        return out
    num_j_blocks = triton.cdiv(table.out_len, BLOCK_J)
    num_c_blocks = triton.cdiv(channels, BLOCK_C)
    grid = (batch * table.out_rows * num_c_blocks * num_j_blocks,)
    acc_dtype = tl.float64 if src.dtype == torch.float64 else tl.float32

    def launch():
        _gather_sum_kernel[grid](
            src, table.for_triton(src.device), out,
            table.out_rows, channels, table.out_len, table.multiplicity, table.src_len,
            num_j_blocks, num_c_blocks,
            src.stride(0), src.stride(1), src.stride(2), src.stride(3),
            out.stride(0), out.stride(1), out.stride(2),
            ACC_DTYPE=acc_dtype, BLOCK_C=BLOCK_C, BLOCK_J=BLOCK_J)

    if src.is_cuda:  # launch on the tensor's device, not the current one
        with torch.cuda.device(src.device):
            launch()
    else:  # TRITON_INTERPRET=1 on CPU tensors
        launch()
    return out
