"""The blocked scan machinery of the 'reference' backend (pure PyTorch).

The sequence is cut into chunks (:func:`plan_chunks`); inside a chunk the linear recurrence
h[t] = a[t] * h[t-1] + b[t] is solved by a blocked scan (:func:`scan_`): the chunk of length
T*n_blocks is viewed as n_blocks blocks of T tokens, the T steps are run for all blocks at once
(one tensor op per step on 1/T of the chunk), then a short loop over the blocks passes the
carries, then one fused op adds carry * cumulative decay. Only products of decays (each <= 1)
are formed, so nothing overflows, and the work is about twice a sequential scan but with
~2*sqrt(chunk) Python-level steps per chunk instead of one per token. :class:`Chunks` holds
the per-call sizes, buffers and layout conversions; :mod:`.reference` runs the passes.
"""
import math

import torch
import torch.nn.functional as F

from .common import compute_dtype, expand_delta_groups

# Elements (B * D * chunk * N) of one chunk-sized work buffer. About six such
# buffers are alive in the backward; 2**19 fp32 values (2 MiB each) was the
# fastest of 2**17 ... 2**22 on a 2-core EPYC (tools/benchmark_ops.py):
# smaller chunks pay more per-op overhead, larger ones miss the caches.
DEFAULT_CHUNK_ELEMENTS = 2**19


# ---------------------------------------------------------------------------
# Blocked scan machinery
#
# The sequence is processed chunk by chunk, each chunk of P = T * n_blocks
# tokens (token p = block * T + step) in the work layout
# (T, B, G, n_blocks, Dg[, N]): the step leads, so each step of the
# within-block loop is one contiguous slice, and (Dg, N) trail, so that
# broadcasts over states run over long contiguous rows and sums over the
# channels of a group are batched matmuls. All chunk-sized buffers are
# allocated once per call, and per-token elementwise work is done chunk by
# chunk in this layout: fresh multi-megabyte tensors cost more in page faults
# than the arithmetic on them.
# ---------------------------------------------------------------------------
LOG2_E = 1.4426950408889634
_PIECE = 2**17


def softplus(x, out=None):
    """``F.softplus`` (threshold 20), several times faster for fp32 on CPU.

    log1p(e) = log(w) - ((w - 1) - e) / w with w = 1 + e corrects the
    rounding of w (torch's CPU log1p and softplus are slow). Above 20 the
    correction is below half an ulp of x, so the result is exactly x, as in
    F.softplus. Works on cache-sized pieces to keep temporaries small.
    """
    if x.dtype != torch.float32 or x.is_cuda:
        return F.softplus(x) if out is None else out.copy_(F.softplus(x))
    x = x.contiguous()
    out = torch.empty_like(x) if out is None else out
    flat_x, flat_out = x.view(-1), out.view(-1)
    for i in range(0, flat_x.numel(), _PIECE):
        piece = flat_x[i:i + _PIECE]
        e = piece.abs().neg_().exp_()
        w = e + 1
        correction = (w - 1).sub_(e).div_(w)
        torch.log(w, out=flat_out[i:i + _PIECE]).sub_(correction).add_(
            piece.clamp(min=0))
    return out


def _blocking(length):
    """(T, n_blocks) with T * n_blocks >= length and T ~ n_blocks ~ sqrt."""
    steps = max(1, math.ceil(math.sqrt(length)))
    return steps, math.ceil(length / steps)


def plan_chunks(length, elements_per_token, chunk_elements=None):
    """(T, n_blocks, n_chunks) so that a chunk buffer holds ~chunk_elements."""
    budget = chunk_elements or DEFAULT_CHUNK_ELEMENTS
    max_len = max(1, budget // max(1, elements_per_token))
    n_chunks = math.ceil(length / max_len)
    steps, n_blocks = _blocking(math.ceil(length / n_chunks))
    return steps, n_blocks, math.ceil(length / (steps * n_blocks))


def scan_(decay, value, init, cum, starts):
    """In-place blocked scan h[p] = decay[p] * h[p-1] + value[p] of a chunk.

    Args:
        decay (Tensor): (T, B, G, n_blocks, Dg, N) in the work layout; left
            unchanged.
        value (Tensor): same shape; overwritten with the states h.
        init (Tensor): (B, G, Dg, N) state before the chunk.
        cum (Tensor): scratch like ``decay`` (cumulative decay in a block).
        starts (Tensor): (B, G, n_blocks, Dg, N); receives the state before
            every block (the backward needs it to form decay * h[p-1]).

    Returns:
        Tensor: (B, G, Dg, N) the state after the last token of the chunk.
    """
    # Within-block scans from a zero state, all blocks at once.
    cum[0] = decay[0]
    for t in range(1, decay.shape[0]):
        value[t].addcmul_(decay[t], value[t - 1])
        torch.mul(decay[t], cum[t - 1], out=cum[t])
    # Carries between blocks: a short sequential pass over block summaries.
    starts[:, :, 0] = init
    for k in range(decay.shape[3] - 1):
        torch.addcmul(value[-1, :, :, k], cum[-1, :, :, k], starts[:, :, k],
                      out=starts[:, :, k + 1])
    carry = torch.addcmul(value[-1, :, :, -1], cum[-1, :, :, -1],
                          starts[:, :, -1])
    value.addcmul_(cum, starts)
    return carry


def adjoint_scan_(decay, value, carry, cum, starts):
    """In-place blocked reverse scan lam[p] = value[p] + decay[p+1] * lam[p+1].

    The decay of the *next* token makes this the adjoint of :func:`scan_`;
    indexing ``decay`` one step ahead saves building a shifted copy.

    Args:
        decay, value, cum, starts: as in :func:`scan_`; ``value`` is
            overwritten with lam.
        carry (Tensor): (B, G, Dg, N) decay[p+1] * lam[p+1] for the token
            after the chunk (the gradient of the last state for the last
            chunk; padded tokens have decay 1).

    Returns:
        Tensor: decay[p0] * lam[p0] for the first token p0 of the chunk, the
        ``carry`` of the previous chunk.
    """
    # cum[t] = decay[t+1] * ... * decay[T-1], the decay from t to block end.
    cum[-1].fill_(1.0)
    for t in range(decay.shape[0] - 2, -1, -1):
        value[t].addcmul_(decay[t + 1], value[t + 1])
        torch.mul(decay[t + 1], cum[t + 1], out=cum[t])
    starts[:, :, -1] = carry
    for k in range(decay.shape[3] - 1, 0, -1):
        out = starts[:, :, k - 1]
        torch.addcmul(value[0, :, :, k], cum[0, :, :, k], starts[:, :, k],
                      out=out)
        out.mul_(decay[0, :, :, k])
    carry = torch.addcmul(value[0, :, :, 0], cum[0, :, :, 0], starts[:, :, 0])
    value.addcmul_(cum, starts)
    return carry.mul_(decay[0, :, :, 0])


def decay_(delta, A2, out):
    """exp(delta * A) as exp2(delta * A * log2(e)) written into ``out``.

    exp2 is ~4x faster than exp on CPU, and clamping the exponent keeps both
    exp2 and later products out of the (slow) subnormal range; decays below
    2**-126 are zero for any practical purpose.
    """
    torch.mul(delta[..., None], A2, out=out)
    out.clamp_(min=-1022.0 if out.dtype == torch.float64 else -126.0)
    return out.exp2_()


class Chunks:
    """Per-call state: sizes, chunk plan, buffers and layout conversions."""

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus,
                 chunk_elements=None):
        self.dtype = dtype = compute_dtype(u)
        self.batch, self.channels, self.length = u.shape
        self.groups, self.d_state = B.shape[1], B.shape[2]
        self.per_group = self.channels // self.groups
        self.ratio = self.channels // delta.shape[1]
        self.steps, self.n_blocks, self.n_chunks = plan_chunks(
            self.length, self.batch * self.channels * self.d_state,
            chunk_elements)
        self.chunk_len = self.steps * self.n_blocks
        self.delta, self.delta_softplus = delta, delta_softplus
        # (G, 1, Dg[, N]) broadcast against (T, B, G, n_blocks, Dg[, N]).
        channel_shape = (self.groups, 1, self.per_group)
        self.bias = None
        if delta_bias is not None:
            self.bias = expand_delta_groups(
                delta_bias.to(dtype)[None, :, None],
                self.channels).view(channel_shape)
        self.A = A.to(dtype).view(channel_shape + (self.d_state, ))
        self.A2 = self.A * LOG2_E
        self.work_shape = (self.steps, self.batch, self.groups,
                           self.n_blocks, self.per_group)
        self.ones = A.new_ones((self.d_state, 1), dtype=dtype)
        rows = self.batch * max(self.channels, self.groups * self.d_state)
        self._rows = u.new_empty(rows * self.chunk_len, dtype=dtype)
        # Padded tokens of the last chunk must get delta = 0 (decay 1).
        self.pad_mask = None
        tail = self.length - (self.n_chunks - 1) * self.chunk_len
        if tail < self.chunk_len:
            token = torch.arange(self.chunk_len, device=u.device).view(
                self.n_blocks, self.steps).t()
            self.pad_mask = (token < tail).to(dtype)[:, None, None, :, None]

    def span(self, c):
        return c * self.chunk_len, min(self.length,
                                       (c + 1) * self.chunk_len)

    def buffers(self, count, states=True):
        shape = self.work_shape + ((self.d_state, ) if states else ())
        return [
            self._rows.new_empty(shape) for _ in range(count)
        ]

    def bc_buffer(self):
        """(T, B, G, n_blocks, N) buffer for B, C and their gradients."""
        return self._rows.new_empty(self.work_shape[:4] + (self.d_state, ))

    def carry_buffer(self):
        return self._rows.new_empty(self.work_shape[1:] + (self.d_state, ))

    def zero_state(self):
        return self._rows.new_zeros(
            (self.batch, self.groups, self.per_group, self.d_state))

    def _split(self, x):
        """(B, G*K, P) -> (T, B, G, n_blocks, K) view."""
        x = x.unflatten(-1, (self.n_blocks, self.steps))
        return x.unflatten(1, (self.groups, -1)).permute(4, 0, 1, 3, 2)

    def _rows_like(self, x):
        return self._rows[:x.shape[0] * x.shape[1] * self.chunk_len].view(
            x.shape[0], x.shape[1], self.chunk_len)

    def to_work(self, x, out):
        """(B, G*K, n) slice of a (B, G*K, L) tensor -> out (T,B,G,nb,K).

        Casts to the compute dtype; padded tokens get zeros (delta = 0 and
        B = C = 0 make the identity pair, decay 1 and value 0).
        """
        n = x.shape[-1]
        if n < self.chunk_len:
            rows = self._rows_like(x)
            rows[..., :n] = x
            rows[..., n:] = 0
            x = rows
        return out.copy_(self._split(x))

    def from_work(self, x, dest):
        """(T, B, G, nb, K) -> dest, a (B, G*K, n) slice (casts on copy)."""
        if dest.shape[-1] == self.chunk_len:
            self._split(dest).copy_(x)
        else:
            rows = self._rows_like(dest)
            self._split(rows).copy_(x)
            dest.copy_(rows[..., :dest.shape[-1]])

    def delta_to_work(self, start, stop, raw, act):
        """Delta of tokens [start, stop) before and after bias/softplus."""
        x = expand_delta_groups(self.delta[..., start:stop], self.channels)
        self.to_work(x, raw)
        if self.bias is not None:
            raw.add_(self.bias)
        if self.delta_softplus:
            softplus(raw, out=act)
        else:
            act.copy_(raw)
        if self.pad_mask is not None and stop == self.length:
            act.mul_(self.pad_mask)
        return act

    def bc(self, x):
        """(T, B, G, nb, N) -> broadcastable (T, B, G, nb, 1, N) view."""
        return x.unsqueeze(4)

    def sum_states(self, h, w, tmp, out):
        """sum_n h * w: (T,B,G,nb,Dg,N) x (T,B,G,nb,N) -> out (T,B,G,nb,Dg)."""
        if self.d_state == 1:
            return torch.mul(h[..., 0], w, out=out)
        torch.mul(h, self.bc(w), out=tmp)
        torch.matmul(tmp, self.ones, out=out[..., None])
        return out

    def sum_channels(self, v, h, tmp, out):
        """sum_k v * h over Dg: (T,B,G,nb,Dg) x (..., N) -> out (T,B,G,nb,N)."""
        if self.d_state == 1:
            torch.mul(v, h[..., 0], out=tmp[..., 0])
            return torch.sum(tmp[..., 0], -1, keepdim=True, out=out)
        torch.matmul(v[..., None, :], h, out=out[..., None, :])
        return out
