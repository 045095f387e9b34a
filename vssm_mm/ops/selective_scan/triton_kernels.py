"""Triton kernels of the selective scan (loaded by :mod:`.triton_backend`).

One program handles one batch element and a block of BLOCK_D channels that
lie in the same B/C group, for all N states, and walks the sequence in chunks
of BLOCK_L tokens. Inside a chunk ``tl.associative_scan`` solves the
recurrence on (decay, value) pairs; the state is carried across chunks by
folding it in (h = local + cumulative_decay * h_before). The forward writes
the state at the end of every chunk, (batch, channels, n_chunks, N) fp32;
the backward walks the chunks in reverse, recomputes the chunk's states from
the previous chunk's saved state and runs the adjoint scan.

Shapes are runtime integers (one compilation serves every feature-map size);
offsets are int64; every load and store is masked. Imported only by
:mod:`.triton_backend`, on first use.
"""
import triton
import triton.language as tl


@triton.jit
def _combine(decay_1, value_1, decay_2, value_2):
    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2.
    return decay_1 * decay_2, decay_2 * value_1 + value_2


@triton.jit
def _softplus(x):
    # log1p(exp(x)) without a log1p: log(w) * e / (w - 1) is exact to fp32
    # rounding even where w = 1 + e rounds to 1 (Goldberg's trick).
    e = tl.exp(x)
    w = 1.0 + e
    small = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x <= 20.0, small, x)


@triton.jit
def _load_delta(delta_ptr, bias, rows, t, mask, length,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Delta after bias and softplus, and its pre-activation (for backward)."""
    raw = tl.load(delta_ptr + rows[:, None] * length + t[None, :], mask=mask,
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    # Masked tokens become identity pairs: decay exp(0) = 1, value 0.
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _last_column(x, BLOCK_L: tl.constexpr):
    cols = tl.arange(0, BLOCK_L)
    return tl.sum(tl.where((cols == BLOCK_L - 1)[None, None, :], x, 0.0),
                  axis=2)


@triton.jit
def _first_column(x, BLOCK_L: tl.constexpr):
    cols = tl.arange(0, BLOCK_L)
    return tl.sum(tl.where((cols == 0)[None, None, :], x, 0.0), axis=2)


@triton.jit
def scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
                    bias_ptr, out_ptr, states_ptr,
                    channels, delta_ratio, groups, length, d_state, n_chunks,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_L: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    mask_d = d < channels
    mask_n = n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // (channels // groups)

    rows = pid_b * channels + d  # int64 rows of u, z, out
    delta_rows = pid_b * (channels // delta_ratio) + d // delta_ratio
    bc_base = (pid_b * groups + group) * d_state * length
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=mask_dn,
                other=0.0)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d // delta_ratio, mask=mask_d, other=0.0)
    skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + d, mask=mask_d, other=0.0)

    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for chunk in range(0, n_chunks):
        t = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_t = t < length
        mask = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        offs = rows[:, None] * length + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, _ = _load_delta(delta_ptr, bias, delta_rows, t, mask, length,
                            HAS_BIAS, SOFTPLUS)
        bc_offs = bc_base + n[:, None] * length + t[None, :]
        B = tl.load(B_ptr + bc_offs, mask=mask_nt, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + bc_offs, mask=mask_nt, other=0.0).to(tl.float32)

        decay = tl.exp(dt[:, None, :] * A[:, :, None])
        value = (dt * u)[:, None, :] * B[None, :, :]
        cum_decay, local = tl.associative_scan((decay, value), axis=2,
                                               combine_fn=_combine)
        states = local + cum_decay * h[:, :, None]
        h = _last_column(states, BLOCK_L)
        tl.store(states_ptr + ((rows * n_chunks + chunk) * d_state)[:, None] +
                 n[None, :], h, mask=mask_dn)

        y = tl.sum(states * C[None, :, :], axis=1)
        y += skip[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
                    bias_ptr, dout_ptr, states_ptr, dlast_ptr,
                    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr,
                    dz_ptr,
                    channels, delta_ratio, groups, length, d_state, n_chunks,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    HAS_DLAST: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_L: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    mask_d = d < channels
    mask_n = n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // (channels // groups)

    rows = pid_b * channels + d
    delta_rows = pid_b * (channels // delta_ratio) + d // delta_ratio
    bc_base = (pid_b * groups + group) * d_state * length
    state_offs = rows[:, None] * d_state + n[None, :]
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=mask_dn,
                other=0.0)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d // delta_ratio, mask=mask_d, other=0.0)
    skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + d, mask=mask_d, other=0.0)

    # Adjoint of the state after the last token (the returned last state).
    lam_next = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if HAS_DLAST:
        lam_next = tl.load(dlast_ptr + state_offs, mask=mask_dn,
                           other=0.0).to(tl.float32)
    dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    for step in range(0, n_chunks):
        chunk = n_chunks - 1 - step
        t = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_t = t < length
        mask = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        offs = rows[:, None] * length + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, raw = _load_delta(delta_ptr, bias, delta_rows, t, mask, length,
                              HAS_BIAS, SOFTPLUS)
        # The adjoint pairs use the decay of the *next* token; reloading
        # delta shifted by one is cheaper than shifting a register tile.
        mask_next = mask_d[:, None] & (t + 1 < length)[None, :]
        dt_next, _ = _load_delta(delta_ptr, bias, delta_rows, t + 1,
                                 mask_next, length, HAS_BIAS, SOFTPLUS)
        bc_offs = bc_base + n[:, None] * length + t[None, :]
        B = tl.load(B_ptr + bc_offs, mask=mask_nt, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + bc_offs, mask=mask_nt, other=0.0).to(tl.float32)

        # Recompute this chunk's states from the state saved before it.
        h0 = tl.load(states_ptr + ((rows * n_chunks + chunk - 1) *
                                   d_state)[:, None] + n[None, :],
                     mask=mask_dn & (chunk > 0), other=0.0)
        decay = tl.exp(dt[:, None, :] * A[:, :, None])
        value = (dt * u)[:, None, :] * B[None, :, :]
        cum_decay, local = tl.associative_scan((decay, value), axis=2,
                                               combine_fn=_combine)
        states = local + cum_decay * h0[:, :, None]

        dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            y = tl.sum(states * C[None, :, :], axis=1) + skip[:, None] * u
            dz = dout * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty),
                     mask=mask)
            dy = dout * z * sig
        else:
            dy = dout

        # lam[t] = C[t] dy[t] + decay[t+1] * lam[t+1]
        decay_next = tl.exp(dt_next[:, None, :] * A[:, :, None])
        adjoint = C[None, :, :] * dy[:, None, :]
        cum_next, local_adj = tl.associative_scan(
            (decay_next, adjoint), axis=2, combine_fn=_combine, reverse=True)
        lam = local_adj + cum_next * lam_next[:, :, None]
        lam_next = _first_column(lam, BLOCK_L)

        dD += tl.sum(dy * u, axis=1)
        lam_B = tl.sum(lam * B[None, :, :], axis=1)
        du = skip[:, None] * dy + dt * lam_B
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)

        # a = decay * h[t-1] = h[t] - delta u B
        lam_a = lam * (states - value)
        dA += tl.sum(lam_a * dt[:, None, :], axis=2)
        ddt = u * lam_B + tl.sum(lam_a * A[:, :, None], axis=1)
        if SOFTPLUS:
            ddt = tl.where(raw <= 20.0, ddt * tl.sigmoid(raw), ddt)
        # Per channel; the wrapper sums channels that share a delta row.
        tl.store(ddelta_ptr + offs, ddt, mask=mask)

        # Channels of the block share B/C: reduce before the atomics.
        dB = tl.sum(lam * (dt * u)[:, None, :], axis=0)
        dC = tl.sum(states * dy[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + bc_offs, dB, mask=mask_nt)
        tl.atomic_add(dC_ptr + bc_offs, dC, mask=mask_nt)

    tl.store(dA_ptr + state_offs, dA, mask=mask_dn)
    tl.store(dD_ptr + rows, dD, mask=mask_d)
