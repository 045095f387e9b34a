"""The 'triton' backend: launches :mod:`.triton_kernels`.

Runs compiled on CUDA tensors, and under the Triton interpreter on CPU tensors
when ``TRITON_INTERPRET=1`` was set before triton was first imported (tests;
see tests/ops/test_selective_scan_triton.py).
"""
import torch

from .backends import triton_interpreting
from .common import reduce_delta_groups

# Upper bound on BLOCK_D * BLOCK_N * BLOCK_L. The backward keeps about ten
# tiles of this size alive; 2048 fp32 values per tile is ~16 registers per
# thread and tile for a 4-warp program. Untuned: revisit on a GPU.
TILE_ELEMENTS = 2048
# Upper bound on BLOCK_N * BLOCK_L (tokens x states scanned per chunk).
MAX_CHUNK_ELEMENTS = 1024


def _kernels():
    # Deferred so that importing vssm_mm never imports triton.
    from . import triton_kernels
    return triton_kernels


def _next_pow2(x):
    return 1 << max(0, int(x) - 1).bit_length()


def block_sizes(channels, groups, d_state, length):
    """(BLOCK_D, BLOCK_N, BLOCK_L); BLOCK_D divides the channels per group so
    that a program never straddles two B/C groups."""
    block_n = _next_pow2(d_state)
    block_l = min(_next_pow2(length), max(16, MAX_CHUNK_ELEMENTS // block_n))
    per_group = channels // groups
    block_d = 1
    while (per_group % (block_d * 2) == 0 and
           block_d * 2 * block_n * block_l <= TILE_ELEMENTS and
           block_d < 16):
        block_d *= 2
    return block_d, block_n, block_l


def saved_state_spec(u, A, B):
    """(shape, dtype) of the one tensor :func:`forward` saves for backward."""
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    block_l = block_sizes(channels, groups, d_state, length)[2]
    return (batch, channels, -(-length // block_l), d_state), torch.float32


def _launch(kernel, grid, interpret, args, constexprs):
    if interpret:
        kernel[grid](*args, **constexprs)
    else:
        # A bare launch would use the current device, not the tensors'.
        with torch.cuda.device(args[0].device):
            kernel[grid](*args, **constexprs, num_warps=4)


def _prepare(u, delta, B, C, z):
    return (u.contiguous(), delta.contiguous(), B.contiguous(),
            C.contiguous(), z.contiguous() if z is not None else None)


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32):
    """Backend contract: see :mod:`.backends`."""
    interpret = triton_interpreting() or not u.is_cuda
    u, delta, B, C, z = _prepare(u, delta, B, C, z)
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    block_d, block_n, block_l = block_sizes(channels, groups, d_state, length)
    n_chunks = -(-length // block_l)
    out = torch.empty_like(u, dtype=torch.float32 if out_float32 else u.dtype)
    states = u.new_empty((batch, channels, n_chunks, d_state),
                         dtype=torch.float32)
    A = A.float().contiguous()
    D_ = D.float().contiguous() if D is not None else A
    bias = delta_bias.float().contiguous() if delta_bias is not None else A
    grid = (batch, channels // block_d)
    _launch(_kernels().scan_fwd_kernel, grid, interpret,
            (u, delta, A, B, C, D_, z if z is not None else u, bias, out,
             states, channels, channels // delta.shape[1], groups, length,
             d_state, n_chunks),
            dict(HAS_D=D is not None, HAS_Z=z is not None,
                 HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d,
                 BLOCK_N=block_n, BLOCK_L=block_l))
    return out, states[:, :, -1], (states, ), None


def backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
             delta_softplus, saved, meta):
    """Backend contract: see :mod:`.backends`."""
    (states, ) = saved
    interpret = triton_interpreting() or not u.is_cuda
    u_in, delta_in, B_in, C_in = u, delta, B, C
    u, delta, B, C, z = _prepare(u, delta, B, C, z)
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    block_d, block_n, block_l = block_sizes(channels, groups, d_state, length)
    n_chunks = states.shape[2]
    if dout is None:
        dout = torch.zeros_like(u)
    f32 = dict(dtype=torch.float32)
    du = torch.empty_like(u)
    ddelta = u.new_empty((batch, channels, length), **f32)
    dA = u.new_empty((batch, channels, d_state), **f32)
    dD = u.new_empty((batch, channels), **f32)
    # fp32 accumulators: several programs add into the same B/C entries.
    dB = torch.zeros_like(B, **f32)
    dC = torch.zeros_like(C, **f32)
    dz = torch.empty_like(z) if z is not None else None
    A32 = A.float().contiguous()
    D_ = D.float().contiguous() if D is not None else A32
    bias = delta_bias.float().contiguous() if delta_bias is not None else A32
    dlast = (dlast_state.float().contiguous()
             if dlast_state is not None else A32)
    grid = (batch, channels // block_d)
    _launch(_kernels().scan_bwd_kernel, grid, interpret,
            (u, delta, A32, B, C, D_, z if z is not None else u, bias, dout,
             states, dlast, du, ddelta, dA, dB, dC, dD,
             dz if dz is not None else du, channels,
             channels // delta.shape[1], groups, length, d_state, n_chunks),
            dict(HAS_D=D is not None, HAS_Z=z is not None,
                 HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(delta_softplus),
                 HAS_DLAST=dlast_state is not None, BLOCK_D=block_d,
                 BLOCK_N=block_n, BLOCK_L=block_l))
    ddelta = reduce_delta_groups(ddelta, delta.shape[1])
    ddelta_bias = (ddelta.sum((0, 2)).to(delta_bias.dtype)
                   if delta_bias is not None else None)
    return (du.to(u_in.dtype), ddelta.to(delta_in.dtype),
            dA.sum(0).to(A.dtype), dB.to(B_in.dtype), dC.to(C_in.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None, dz,
            ddelta_bias)
