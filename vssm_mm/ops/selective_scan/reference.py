"""The 'reference' backend: a chunked, recompute-based pure-PyTorch scan.

Semantics in ``docs/selective_scan.md`` (Mamba-1 selective scan with grouped B/C, optional
delta groups, D skip and z gate); the obviously-correct oracle is
:func:`.naive.selective_scan_naive`. It runs on any device and is the truth the other backends
are tested against.

The sequence is cut into chunks; only the state at the start of every chunk is saved, and the
backward walks the chunks in reverse, recomputes each chunk's states from its saved start state
and runs the adjoint (reverse) scan, so memory is O(B*D*L + B*D*n_chunks*N), never
O(B*D*L*N). The chunk plan and the blocked scan inside a chunk are in :mod:`.blocked_scan`.
"""
import torch
import torch.nn.functional as F

from . import blocked_scan
from .blocked_scan import Chunks, adjoint_scan_, decay_, scan_
from .common import SOFTPLUS_THRESHOLD, compute_dtype, reduce_delta_groups


def _flat(x):
    """(B, G, N, L) -> (B, G*N, L) (a view when x is contiguous)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _empty(x, dtype=None):
    """Contiguous like ``x`` (empty_like would copy a transposed layout)."""
    return x.new_empty(x.shape, dtype=dtype or x.dtype)


def scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                 out_float32=False, chunk_elements=None):
    """Forward pass of the reference backend.

    Args: as :func:`vssm_mm.ops.selective_scan.selective_scan`, with B and C
        already 4-D (batch, G, N, L).

    Returns:
        tuple: ``(out, last_state, chunk_starts)``; ``chunk_starts``
        (B, D, n_chunks, N) is the state before every chunk in the compute
        dtype; with the inputs it is all the backward needs.
    """
    ch = Chunks(u, delta, A, B, C, delta_bias, delta_softplus,
                 chunk_elements)
    dtype = ch.dtype
    out = _empty(u, dtype=dtype if out_float32 else u.dtype)
    chunk_starts = u.new_empty(
        (ch.batch, ch.channels, ch.n_chunks, ch.d_state), dtype=dtype)
    raw_w, dt_w, u_w, du_w, y_w, z_w = ch.buffers(6, states=False)
    decay, states, tmp = ch.buffers(3)
    B_w, C_w = ch.bc_buffer(), ch.bc_buffer()
    block_starts = ch.carry_buffer()
    D_g = D.to(dtype).view(ch.A.shape[:3]) if D is not None else None
    h = ch.zero_state()
    for c in range(ch.n_chunks):
        start, stop = ch.span(c)
        chunk_starts[:, :, c] = h.view(ch.batch, ch.channels, ch.d_state)
        ch.delta_to_work(start, stop, raw_w, dt_w)
        ch.to_work(u[..., start:stop], u_w)
        torch.mul(dt_w, u_w, out=du_w)
        ch.to_work(_flat(B)[..., start:stop], B_w)
        ch.to_work(_flat(C)[..., start:stop], C_w)
        decay_(dt_w, ch.A2, decay)
        torch.mul(du_w[..., None], ch.bc(B_w), out=states)
        h = scan_(decay, states, h, tmp, block_starts)
        ch.sum_states(states, C_w, tmp, y_w)
        if D_g is not None:
            y_w.addcmul_(D_g, u_w)
        if z is not None:
            ch.to_work(z[..., start:stop], z_w)
            y_w.mul_(F.silu(z_w))
        ch.from_work(y_w, out[..., start:stop])
    last_state = h.reshape(ch.batch, ch.channels, ch.d_state)
    return out, last_state, chunk_starts


def scan_backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
                  delta_softplus, chunk_starts, chunk_elements=None):
    """Backward pass of the reference backend (Mamba's gradient formulas).

    Args:
        dout (Tensor | None): gradient of the (gated) output.
        dlast_state (Tensor | None): gradient of the returned last state.
        chunk_starts (Tensor): what :func:`scan_forward` returned.
        Others: the forward inputs (B, C 4-D).

    Returns:
        tuple: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in the
        dtype of its input, None where the input was None.
    """
    ch = Chunks(u, delta, A, B, C, delta_bias, delta_softplus,
                 chunk_elements)
    dtype, n_chunks = ch.dtype, ch.n_chunks
    if chunk_starts.shape[2] != n_chunks:
        raise RuntimeError('chunk plan changed between forward and backward')
    du, ddelta, dB, dC = _empty(u), _empty(delta), _empty(B), _empty(C)
    dz = _empty(z) if z is not None else None
    ddelta_c = (u.new_empty((ch.batch, ch.channels, ch.chunk_len),
                            dtype=dtype) if ch.ratio > 1 else None)
    D_g = D.to(dtype).view(ch.A.shape[:3]) if D is not None else None

    raw_w, dt_w, u_w, du_w, dy_w, dout_w, z_w, x_w, lam_B_w = ch.buffers(
        9, states=False)
    decay, states, lam, decay_h, tmp, dA_acc = ch.buffers(6)
    # Sums over batch and time: accumulate chunk-sized, reduce once.
    dA_acc.zero_()
    dD_acc, dbias_acc = ch.buffers(2, states=False)
    dD_acc.zero_()
    dbias_acc.zero_()
    B_w, C_w, grad_bc = ch.bc_buffer(), ch.bc_buffer(), ch.bc_buffer()
    block_starts = ch.carry_buffer()
    starts = chunk_starts.to(dtype).view(ch.batch, ch.groups, ch.per_group,
                                         n_chunks, ch.d_state)
    lam_carry = (dlast_state.to(dtype).view_as(ch.zero_state())
                 if dlast_state is not None else ch.zero_state())
    for c in range(n_chunks - 1, -1, -1):
        start, stop = ch.span(c)
        ch.delta_to_work(start, stop, raw_w, dt_w)
        ch.to_work(u[..., start:stop], u_w)
        torch.mul(dt_w, u_w, out=du_w)
        if dout is not None:
            ch.to_work(dout[..., start:stop], dout_w)
        else:
            dout_w.zero_()
        if z is not None:
            ch.to_work(z[..., start:stop], z_w)
            sig_z = torch.sigmoid(z_w)
            torch.mul(dout_w, z_w, out=dy_w).mul_(sig_z)
        else:
            dy_w.copy_(dout_w)
        ch.to_work(_flat(B)[..., start:stop], B_w)
        ch.to_work(_flat(C)[..., start:stop], C_w)

        decay_(dt_w, ch.A2, decay)
        # Recompute the chunk's states from the saved start state, then
        # decay[p] * h[p-1] (dA and ddelta need it) while the block starts
        # are at hand.
        torch.mul(du_w[..., None], ch.bc(B_w), out=states)
        scan_(decay, states, starts[:, :, :, c], tmp, block_starts)
        torch.mul(decay[1:], states[:-1], out=decay_h[1:])
        torch.mul(decay[0], block_starts, out=decay_h[0])

        torch.mul(dy_w[..., None], ch.bc(C_w), out=lam)
        # lam_carry: decay * lam of the token after this chunk.
        lam_carry = adjoint_scan_(decay, lam, lam_carry, tmp, block_starts)

        ch.from_work(ch.sum_channels(dy_w, states, tmp, grad_bc),
                     _flat(dC)[..., start:stop])
        if z is not None:
            y_w = ch.sum_states(states, C_w, tmp, x_w)
            if D_g is not None:
                y_w.addcmul_(D_g, u_w)
            # d/dz [y * z * sigmoid(z)] = y * sig * (1 + z * (1 - sig))
            dz_w = y_w.mul_(dout_w).mul_(sig_z).mul_(
                z_w.mul(1 - sig_z).add_(1))
            ch.from_work(dz_w, dz[..., start:stop])
        lam_a = decay_h.mul_(lam)
        ch.from_work(ch.sum_channels(du_w, lam, tmp, grad_bc),
                     _flat(dB)[..., start:stop])
        ch.sum_states(lam, B_w, tmp, lam_B_w)
        dA_acc.addcmul_(lam_a, dt_w[..., None])
        # ddelta = u * sum_n lam B + sum_n lam A a
        if ch.d_state == 1:
            ddelta_w = torch.mul(lam_a[..., 0], ch.A[..., 0], out=x_w)
        else:
            torch.mul(lam_a, ch.A, out=tmp)
            ddelta_w = torch.matmul(tmp, ch.ones, out=x_w[..., None])[..., 0]
        ddelta_w.addcmul_(u_w, lam_B_w)
        if delta_softplus:
            ddelta_w.mul_(
                torch.sigmoid(raw_w).masked_fill_(raw_w > SOFTPLUS_THRESHOLD,
                                                  1.0))
        if ch.pad_mask is not None and stop == ch.length:
            # Padded tokens have a nonzero adjoint; keep them out of sums.
            ddelta_w.mul_(ch.pad_mask)
        dbias_acc.add_(ddelta_w)
        if ddelta_c is None:
            ch.from_work(ddelta_w, ddelta[..., start:stop])
        else:
            dest = ddelta_c[..., :stop - start]
            ch.from_work(ddelta_w, dest)
            ddelta[..., start:stop] = reduce_delta_groups(dest,
                                                          delta.shape[1])
        # du = delta * sum_n lam B + D dy
        du_c = lam_B_w.mul_(dt_w)
        if D_g is not None:
            du_c.addcmul_(D_g, dy_w)
            dD_acc.addcmul_(dy_w, u_w)
        ch.from_work(du_c, du[..., start:stop])

    dA = dA_acc.sum((0, 1, 3)).view(A.shape).to(A.dtype)
    dD = (dD_acc.sum((0, 1, 3)).view(-1).to(D.dtype)
          if D is not None else None)
    ddelta_bias = None
    if delta_bias is not None:
        ddelta_bias = dbias_acc.sum((0, 1, 3)).view(-1, ch.ratio).sum(1)
        ddelta_bias = ddelta_bias.to(delta_bias.dtype)
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias


# ---------------------------------------------------------------------------
# Backend contract (see backends.py)
# ---------------------------------------------------------------------------
def saved_state_spec(u, A, B):
    """(shape, dtype) of the one tensor :func:`forward` saves for backward."""
    batch, channels, length = u.shape
    n_chunks = blocked_scan.plan_chunks(length, batch * channels * A.shape[1])[2]
    return (batch, channels, n_chunks, A.shape[1]), compute_dtype(u)


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32):
    """Backend contract: see :mod:`.backends`."""
    out, last_state, starts = scan_forward(u, delta, A, B, C, D, z,
                                           delta_bias, delta_softplus,
                                           out_float32)
    return out, last_state, (starts, ), None


def backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
             delta_softplus, saved, meta):
    """Backend contract: see :mod:`.backends`."""
    return scan_backward(dout, dlast_state, u, delta, A, B, C, D, z,
                         delta_bias, delta_softplus, saved[0])
