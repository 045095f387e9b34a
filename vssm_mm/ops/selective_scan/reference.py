"""The 'reference' backend: a chunked, recompute-based pure-PyTorch scan.

Semantics in ``docs/selective_scan.md`` (Mamba-1 selective scan with grouped
B/C, optional delta groups, D skip and z gate); the obviously-correct oracle
is :func:`.naive.selective_scan_naive`.

* :func:`scan_forward` / :func:`scan_backward` are the ``'reference'`` backend.
  The sequence is cut into chunks; only the state at the start of every chunk
  is saved, and the backward walks the chunks in reverse, recomputes each
  chunk's states from its saved start state and runs the adjoint (reverse)
  scan, so memory is O(B*D*L + B*D*n_chunks*N), never O(B*D*L*N).

Inside a chunk the linear recurrence h[t] = a[t] * h[t-1] + b[t] is solved by
a blocked scan (see :func:`_scan_`): the chunk of length T*n_blocks is viewed
as n_blocks blocks of T tokens, the T steps are run for all blocks at once
(one tensor op per step on 1/T of the chunk), then a short loop over the
blocks passes the carries, then one fused op adds carry * cumulative decay.
Only products of decays (each <= 1) are formed, so nothing overflows, and the
work is about twice a sequential scan but with ~2*sqrt(chunk) Python-level
steps per chunk instead of one per token.

Opt-in: with ``VSSM_SCAN_COMPILE=1`` large fp32 CPU scans (N > 1) run the
per-token work through ``torch.compile`` instead (see "Optional compiled
path" below), falling back to the eager path if compiling fails.
"""
import math
import os
import warnings

import torch
import torch.nn.functional as F

from .common import (SOFTPLUS_THRESHOLD, compute_dtype,
                     expand_delta_groups,
                     reduce_delta_groups)

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
    if compile_enabled():
        # Chunks of whole compiled calls (see _compiled_forward), blocked
        # as evenly as that allows for the eager path, which runs the same
        # plan when it stands in for the compiled one.
        target = math.ceil(length / n_chunks)
        steps = COMPILE_TOKENS * max(1, round(math.sqrt(target) /
                                              COMPILE_TOKENS))
        n_blocks = max(1, round(target / steps))
        return steps, n_blocks, math.ceil(length / (steps * n_blocks))
    steps, n_blocks = _blocking(math.ceil(length / n_chunks))
    return steps, n_blocks, math.ceil(length / (steps * n_blocks))


def _scan_(decay, value, init, cum, starts):
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


def _adjoint_scan_(decay, value, carry, cum, starts):
    """In-place blocked reverse scan lam[p] = value[p] + decay[p+1] * lam[p+1].

    The decay of the *next* token makes this the adjoint of :func:`_scan_`;
    indexing ``decay`` one step ahead saves building a shifted copy.

    Args:
        decay, value, cum, starts: as in :func:`_scan_`; ``value`` is
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


def _decay_(delta, A2, out):
    """exp(delta * A) as exp2(delta * A * log2(e)) written into ``out``.

    exp2 is ~4x faster than exp on CPU, and clamping the exponent keeps both
    exp2 and later products out of the (slow) subnormal range; decays below
    2**-126 are zero for any practical purpose.
    """
    torch.mul(delta[..., None], A2, out=out)
    out.clamp_(min=-1022.0 if out.dtype == torch.float64 else -126.0)
    return out.exp2_()


class _Chunks:
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


# ---------------------------------------------------------------------------
# Optional compiled path ($VSSM_SCAN_COMPILE=1)
#
# The eager path above is bound by memory passes: every elementwise op is a
# pass over a chunk-sized (B, D, chunk, N) buffer, ~9 in the forward and ~22
# in the backward. With VSSM_SCAN_COMPILE=1, fp32 CPU scans of at least
# COMPILE_MIN_ELEMENTS (B*D*L*N) run the per-token work through
# torch.compile (inductor's C++ backend) instead: one call per COMPILE_TOKENS
# tokens, the token loop unrolled in the graph, so that a state is read and
# written once per token and the sums over N, over channels and over batch
# are fused into a few loops over cache-resident data; the (B, D, L)
# elementwise work before and after the calls is compiled too (one fused
# pass each). The math is the eager path's (same decay clamp, same gradient
# formulas), so the two agree to fp32 rounding. While the variable is set,
# plan_chunks makes chunks whole calls (both paths use that plan, so the
# saved states fit either). The first call per shape compiles (seconds to
# tens of seconds; inductor caches the result on disk); if compiling fails
# (no C++ compiler, ...), a warning is given once and the eager path is used
# from then on. N = 1, fp64 (gradcheck), non-CPU tensors and small problems
# always run eagerly.
# ---------------------------------------------------------------------------
COMPILE_ENV = 'VSSM_SCAN_COMPILE'
# Tokens per compiled call; also the chunk granularity of the plan (8 and 16
# were equally fast per token on a 2-core EPYC, 32 was slower; 16 halves the
# number of calls).
COMPILE_TOKENS = 16
# exp(x) for x below this is subnormal in fp32; clamped as in _decay_.
MIN_LOG_DECAY = -126.0 / LOG2_E
# Below this many B*D*L*N elements compiling is not worth it.
COMPILE_MIN_ELEMENTS = 2**22
_compiled = {}
_compile_state = {'works': None}  # None: not tried yet, then True / False


def compile_enabled():
    """True when ``$VSSM_SCAN_COMPILE`` asks for the compiled path."""
    return os.environ.get(COMPILE_ENV, '0') == '1'


def _use_compiled(u, B):
    if not compile_enabled() or _compile_state['works'] is False:
        return False
    if u.device.type != 'cpu' or compute_dtype(u) != torch.float32:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    batch, channels, length = u.shape
    # N = 1 is faster eagerly (inductor vectorises along N).
    return B.shape[2] > 1 and (batch * channels * length * B.shape[2] >=
                               COMPILE_MIN_ELEMENTS)


def _compiled_core(name):
    if name not in _compiled:
        fn = {'prepare': _prepare, 'forward': _core_forward,
              'backward': _core_backward, 'finish_forward': _finish_forward,
              'finish_backward': _finish_backward}[name]
        _compiled[name] = torch.compile(fn, fullgraph=True)
    return _compiled[name]


def _try_compiled(run, *args):
    """``run(*args)``, or None when compiling fails for the first time."""
    try:
        result = run(*args)
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        return None  # too many shapes: this call runs eagerly
    except Exception as err:  # any compiler failure: no C++ compiler, ...
        if _compile_state['works']:
            raise
        _compile_state['works'] = False
        warnings.warn(f'{COMPILE_ENV}=1 but torch.compile failed '
                      f'({type(err).__name__}: {err}); using the eager '
                      'reference scan', RuntimeWarning)
        return None
    _compile_state['works'] = True
    return result


def _core_forward(dt, du, B, C, A, h, with_y: bool):
    """COMPILE_TOKENS tokens of the scan (compiled, token loop unrolled).

    Args:
        dt, du (Tensor): (batch, G, Dg, T) delta (after bias and softplus)
            and delta * u. Computed outside: inductor would inline them
            into every (token, state) element, N times the work.
        B, C (Tensor): (batch, G, T, N).
        A (Tensor): (G, Dg, N).
        h (Tensor): (batch, G, Dg, N) state before the first token.

    Returns:
        Tensor | tuple: the last state, preceded by sum_n C h (batch, G,
        Dg, T) when ``with_y``.
    """
    states = []
    for t in range(dt.shape[-1]):
        decay = torch.exp((dt[..., t, None] * A).clamp(min=MIN_LOG_DECAY))
        h = decay * h + du[..., t, None] * B[:, :, None, t]
        states.append(h)
    if not with_y:
        return h
    return (torch.stack(states, 3) * C[:, :, None]).sum(-1), h


def _core_backward(dt, du, B, C, A, h, dy, grad_h, with_y: bool):
    """Gradients for COMPILE_TOKENS tokens (compiled, loops unrolled).

    Recomputes the states from ``h`` and runs the adjoint scan from
    ``grad_h``, the gradient of the last state (padded tokens are the
    identity). Arguments as in :func:`_core_forward`; ``dy`` (batch, G, Dg,
    T) is the gradient of y (before the gate).

    Returns:
        tuple: dB, dC (batch, G, T, N); the gradients of du and (through
        the decay only) of dt, (batch, G, Dg, T); dA (G, Dg, N) summed over
        batch and tokens; the gradient of the state before the first token;
        sum_n C h as in :func:`_core_forward` when ``with_y``.
    """
    steps = dt.shape[-1]
    states, decays = [], []
    for t in range(steps):
        decay = torch.exp((dt[..., t, None] * A).clamp(min=MIN_LOG_DECAY))
        h = decay * h + du[..., t, None] * B[:, :, None, t]
        states.append(h)
        decays.append(decay)
    lams = [None] * steps
    for t in range(steps - 1, -1, -1):
        lams[t] = grad_h + dy[..., t, None] * C[:, :, None, t]
        grad_h = decays[t] * lams[t]
    H, lam = torch.stack(states, 3), torch.stack(lams, 3)
    B, C = B[:, :, None], C[:, :, None]
    # lam[t] * decay[t] * h[t-1] as lam[t] * (h[t] - du[t] * B[t]).
    lam_ah = lam * (H - du[..., None] * B)
    grads = ((lam * du[..., None]).sum(2), (H * dy[..., None]).sum(2),
             (lam * B).sum(-1), (lam_ah * A[:, :, None]).sum(-1),
             (lam_ah * dt[..., None]).sum((0, 3)), grad_h)
    return grads + ((H * C).sum(-1), ) if with_y else grads


def _to_calls(x, groups, tokens, pad_value=0.0, states=False):
    """(batch, G*K, L) or (batch, G, K, L) -> (n_calls, batch, G, K, T),
    padded to whole calls, or (n_calls, batch, G, T, N) for ``states``."""
    batch, length = x.shape[0], x.shape[-1]
    x = F.pad(x, (0, -length % tokens), value=pad_value)
    x = x.reshape(batch, groups, -1, x.shape[-1] // tokens, tokens)
    return x.permute((3, 0, 1, 4, 2) if states else (3, 0, 1, 2, 4))


def _from_calls(x, length, states=False):
    """Inverse of :func:`_to_calls`: (batch, G*K, L)."""
    x = x.permute((1, 2, 4, 0, 3) if states else (1, 2, 3, 0, 4))
    return x.reshape(x.shape[0], -1, x.shape[3] * x.shape[4])[..., :length]


def _prepare(delta, delta_bias, u, dout, z, groups: int,
             delta_softplus: bool):
    """Per-token inputs of the calls (compiled: one pass, fused).

    Returns:
        tuple: delta + bias, delta after softplus, delta * u and u, in the
        call-major layout, then the gradient of y (before the gate) when
        ``dout`` is given. Padded tokens get delta = 0 (decay 1,
        softplus(-inf) = 0) and u = 0.
    """
    f32, tokens = torch.float32, COMPILE_TOKENS
    raw = delta.to(f32)
    if delta_bias is not None:
        raw = raw + delta_bias.to(f32)[:, None]
    raw = expand_delta_groups(raw, u.shape[1])
    raw = _to_calls(raw, groups, tokens, -math.inf if delta_softplus else 0.)
    dt = raw
    if delta_softplus:
        # As softplus() above: inductor's log1p is scalar and 5x slower.
        e = torch.exp(-raw.abs())
        w = e + 1
        dt = torch.log(w) - ((w - 1) - e) / w + raw.clamp(min=0)
    u = _to_calls(u.to(f32), groups, tokens)
    result = (raw.contiguous(), dt.contiguous(), (dt * u).contiguous(),
              u.contiguous())
    if dout is None:
        return result
    dy = dout.to(f32)
    if z is not None:
        dy = dy * F.silu(z.to(f32))
    return result + (_to_calls(dy, groups, tokens).contiguous(), )


def _finish_forward(y, u, D, z, length: int):
    """y + D u in the (batch, channels, L) layout, gated (compiled)."""
    if D is not None:
        y = y + D.to(torch.float32).view(y.shape[2], y.shape[3], 1) * u
    y = _from_calls(y, length)
    if z is not None:
        y = y * F.silu(z.to(torch.float32))
    return y


def _finish_backward(d_du, ddt, raw, dt, u, dy, D, y, dout, z,
                     delta_channels: int, length: int, delta_softplus: bool):
    """Elementwise tail of the backward (compiled: fused passes).

    Returns:
        tuple: du, ddelta (reduced over delta groups), dD, ddelta_bias (per
        delta channel, before casting) and dz; dD, dz None when D, z are.
    """
    batch, channels = u.shape[1], u.shape[2] * u.shape[3]
    ddt = ddt + u * d_du
    if delta_softplus:
        ddt = ddt * torch.where(raw > SOFTPLUS_THRESHOLD, 1.0,
                                torch.sigmoid(raw))
    du = d_du * dt
    dD = dz = None
    if D is not None:
        D = D.to(torch.float32).view(u.shape[2], u.shape[3], 1)
        du = du + D * dy
        dD = (dy * u).sum((0, 1, 4)).view(-1)
    ddelta = _from_calls(ddt, length)
    ratio = channels // delta_channels
    dbias = ddelta.sum((0, 2)).view(delta_channels, ratio).sum(1)
    ddelta = ddelta.reshape(batch, delta_channels, ratio, length).sum(2)
    if z is not None:
        if D is not None:
            y = y + D * u
        z = z.to(torch.float32)
        sig = torch.sigmoid(z)
        # d/dz [y * z * sigmoid(z)] = y * sig * (1 + z * (1 - sig))
        dz = _from_calls(y, length) * dout.to(torch.float32) * sig * (
            1 + z * (1 - sig))
    return _from_calls(du, length), ddelta, dD, dbias, dz


def _state(x, shape):
    """(batch, channels, N) -> contiguous fp32 (batch, G, Dg, N)."""
    return x.to(torch.float32).reshape(shape).contiguous()


def _compiled_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                      out_float32, plan):
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    state_shape = (batch, groups, channels // groups, d_state)
    _, dt, du, u_c = _compiled_core('prepare')(delta, delta_bias, u, None,
                                               None, groups, delta_softplus)
    B_c, C_c = (_to_calls(x.to(torch.float32), groups, COMPILE_TOKENS,
                          states=True).contiguous() for x in (B, C))
    A_g = A.to(torch.float32).view(state_shape[1:])
    core = _compiled_core('forward')
    calls_per_chunk = plan[0] * plan[1] // COMPILE_TOKENS
    chunk_starts = u.new_empty((batch, channels, plan[2], d_state),
                               dtype=torch.float32)
    h = u.new_zeros(state_shape, dtype=torch.float32)
    ys = []
    for k in range(dt.shape[0]):
        if k % calls_per_chunk == 0:
            chunk_starts[:, :, k // calls_per_chunk] = h.view(
                batch, channels, d_state)
        y, h = core(dt[k], du[k], B_c[k], C_c[k], A_g, h, True)
        ys.append(y)
    y = _compiled_core('finish_forward')(torch.stack(ys), u_c, D, z, length)
    out = y if out_float32 else y.to(u.dtype)
    return out, h.reshape(batch, channels, d_state), chunk_starts


def _compiled_backward(dout, dlast_state, u, delta, A, B, C, D, z,
                       delta_bias, delta_softplus, chunk_starts, plan):
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    state_shape = (batch, groups, channels // groups, d_state)
    if dout is None:
        dout = u.new_zeros(u.shape, dtype=torch.float32)
    raw, dt, du, u_c, dy = _compiled_core('prepare')(
        delta, delta_bias, u, dout, z, groups, delta_softplus)
    B_c, C_c = (_to_calls(x.to(torch.float32), groups, COMPILE_TOKENS,
                          states=True).contiguous() for x in (B, C))
    A_g = A.to(torch.float32).view(state_shape[1:])
    forward, backward = _compiled_core('forward'), _compiled_core('backward')
    calls_per_chunk = plan[0] * plan[1] // COMPILE_TOKENS
    n_calls = dt.shape[0]
    grad_h = _state(dlast_state if dlast_state is not None else
                    u.new_zeros(batch, channels, d_state), state_shape)
    per_call = [None] * n_calls
    dA = A_g.new_zeros(A_g.shape)
    for c in range(plan[2] - 1, -1, -1):
        first = c * calls_per_chunk
        calls = range(first, min(first + calls_per_chunk, n_calls))
        # States before every call of the chunk, from the saved chunk start.
        starts = [_state(chunk_starts[:, :, c], state_shape)]
        for k in calls[:-1]:
            starts.append(forward(dt[k], du[k], B_c[k], C_c[k], A_g,
                                  starts[-1], False))
        for k in reversed(calls):
            out = backward(dt[k], du[k], B_c[k], C_c[k], A_g,
                           starts[k - first], dy[k], grad_h, z is not None)
            dA += out[4]
            grad_h = out[5]
            per_call[k] = out
    dB, dC, d_du, ddt = (torch.stack([o[i] for o in per_call])
                         for i in range(4))
    y = torch.stack([o[6] for o in per_call]) if z is not None else None
    du, ddelta, dD, dbias, dz = _compiled_core('finish_backward')(
        d_du, ddt, raw, dt, u_c, dy, D, y, dout, z, delta.shape[1], length,
        delta_softplus)
    return (du.to(u.dtype), ddelta.to(delta.dtype),
            dA.view(A.shape).to(A.dtype),
            _from_calls(dB, length, states=True).reshape(B.shape).to(B.dtype),
            _from_calls(dC, length, states=True).reshape(C.shape).to(C.dtype),
            dD.to(D.dtype) if D is not None else None,
            dz.to(z.dtype) if z is not None else None,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None)


# ---------------------------------------------------------------------------
# The 'reference' backend
# ---------------------------------------------------------------------------
def _flat(x):
    """(B, G, N, L) -> (B, G*N, L) (a view when x is contiguous)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _empty(x, dtype=None):
    """Contiguous like ``x`` (empty_like would copy a transposed layout)."""
    return x.new_empty(x.shape, dtype=dtype or x.dtype)


def scan_forward(u,
                 delta,
                 A,
                 B,
                 C,
                 D=None,
                 z=None,
                 delta_bias=None,
                 delta_softplus=False,
                 out_float32=False,
                 chunk_elements=None):
    """Forward pass of the reference backend.

    Args: as :func:`vssm_mm.ops.selective_scan.selective_scan`, with B and C
        already 4-D (batch, G, N, L).

    Returns:
        tuple: ``(out, last_state, chunk_starts)``; ``chunk_starts``
        (B, D, n_chunks, N) is the state before every chunk in the compute
        dtype; with the inputs it is all the backward needs.
    """
    if _use_compiled(u, B):
        plan = plan_chunks(u.shape[2], u.shape[0] * u.shape[1] * B.shape[2],
                           chunk_elements)
        result = _try_compiled(_compiled_forward, u, delta, A, B, C, D, z,
                               delta_bias, delta_softplus, out_float32, plan)
        if result is not None:
            return result
    ch = _Chunks(u, delta, A, B, C, delta_bias, delta_softplus,
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
        _decay_(dt_w, ch.A2, decay)
        torch.mul(du_w[..., None], ch.bc(B_w), out=states)
        h = _scan_(decay, states, h, tmp, block_starts)
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
    if _use_compiled(u, B):
        plan = plan_chunks(u.shape[2], u.shape[0] * u.shape[1] * B.shape[2],
                           chunk_elements)
        if chunk_starts.shape[2] != plan[2]:
            raise RuntimeError(
                'chunk plan changed between forward and backward')
        result = _try_compiled(_compiled_backward, dout, dlast_state, u,
                               delta, A, B, C, D, z, delta_bias,
                               delta_softplus, chunk_starts, plan)
        if result is not None:
            return result
    ch = _Chunks(u, delta, A, B, C, delta_bias, delta_softplus,
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

        _decay_(dt_w, ch.A2, decay)
        # Recompute the chunk's states from the saved start state, then
        # decay[p] * h[p-1] (dA and ddelta need it) while the block starts
        # are at hand.
        torch.mul(du_w[..., None], ch.bc(B_w), out=states)
        _scan_(decay, states, starts[:, :, :, c], tmp, block_starts)
        torch.mul(decay[1:], states[:-1], out=decay_h[1:])
        torch.mul(decay[0], block_starts, out=decay_h[0])

        torch.mul(dy_w[..., None], ch.bc(C_w), out=lam)
        # lam_carry: decay * lam of the token after this chunk.
        lam_carry = _adjoint_scan_(decay, lam, lam_carry, tmp, block_starts)

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
# Backend contract (shared by every module listed in backends.py)
# ---------------------------------------------------------------------------
def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32):
    """Backend entry point for the forward pass.

    Inputs are already validated: u, delta, z (batch, channels, L), B/C
    (batch, G, N, L), A (channels, N), D (channels), delta_bias (delta
    channels).

    Returns:
        tuple: ``(out, last_state, saved, meta)``: ``saved`` is a tuple of
        tensors for ``ctx.save_for_backward``, ``meta`` any non-tensor data.
    """
    out, last_state, starts = scan_forward(u, delta, A, B, C, D, z,
                                           delta_bias, delta_softplus,
                                           out_float32)
    return out, last_state, (starts, ), None


def backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
             delta_softplus, saved, meta):
    """Backend entry point for the backward pass.

    Returns:
        tuple: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in the dtypes of
        the inputs, None for inputs that were None.
    """
    return scan_backward(dout, dlast_state, u, delta, A, B, C, D, z,
                         delta_bias, delta_softplus, saved[0])
