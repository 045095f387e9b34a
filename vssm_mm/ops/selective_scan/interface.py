"""The public ``selective_scan`` function and its autograd Function."""
import contextlib
import warnings

import torch

from .backends import load_backend, resolve_backend
from .library import COMPILABLE_BACKENDS, selective_scan_op

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@contextlib.contextmanager
def _quiet_tracer():
    """FLOP counters trace the model with torch.jit; the op's internal shape
    arithmetic would flood them with TracerWarnings that mean nothing here
    (the op is recorded as one opaque node)."""
    if not torch.jit.is_tracing():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        yield


class SelectiveScanFn(torch.autograd.Function):
    """One autograd Function for every backend.

    Keeping a single class means ``torch.jit.trace`` always records the op as
    ``prim::PythonOp.SelectiveScanFn``, whichever backend ran, so a single
    FLOP handle covers them all (see :mod:`.flops`).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                out_float32, backend):
        impl = load_backend(backend)
        # The math is fp32 by design; autocast must not downcast inner ops.
        with torch.autocast(device_type=u.device.type, enabled=False), \
                _quiet_tracer():
            out, last_state, saved, meta = impl.forward(
                u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                out_float32)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *saved)
        ctx.backend, ctx.meta, ctx.delta_softplus = backend, meta, delta_softplus
        # Unused outputs (often last_state) arrive as None instead of zeros.
        ctx.set_materialize_grads(False)
        return out, last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast_state):
        u, delta, A, B, C, D, z, delta_bias, *saved = ctx.saved_tensors
        if dout is not None:
            # Backends assume the layout of the output they produced.
            dout = dout.contiguous()
        with torch.autocast(device_type=u.device.type, enabled=False):
            grads = load_backend(ctx.backend).backward(
                dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
                ctx.delta_softplus, tuple(saved), ctx.meta)
        return (*grads, None, None, None)


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    for name, x in (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D),
                    ('z', z), ('delta_bias', delta_bias)):
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f'{name} must be a tensor, got {type(x).__name__}')
        if x is not None and x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'{name} must be a floating-point tensor (fp16, bf16, fp32 or fp64), '
                            f'got {x.dtype}; convert it with .float()')
    if u.dim() != 3:
        raise ValueError(f'u must be (batch, channels, L), got {tuple(u.shape)}')
    batch, channels, length = u.shape
    if 0 in (batch, channels, length):
        raise ValueError(f'selective_scan needs a non-empty input, got u of shape '
                         f'(batch={batch}, channels={channels}, L={length}); skip the scan for '
                         'empty batches or feature maps')
    if delta.dim() != 3 or delta.shape[0] != batch or delta.shape[1] == 0 or \
            delta.shape[2] != length or channels % delta.shape[1] != 0:
        raise ValueError(
            f'delta must be (batch, channels / r, L) for an integer r, got '
            f'{tuple(delta.shape)} for u of shape {tuple(u.shape)}')
    if A.dim() != 2 or A.shape[0] != channels or A.shape[1] == 0:
        raise ValueError(
            f'A must be (channels, N) = ({channels}, N) with N >= 1, got {tuple(A.shape)}')
    d_state = A.shape[1]
    for name, x in (('B', B), ('C', C)):
        if x.dim() != 4 or x.shape[0] != batch or x.shape[1] == 0 or x.shape[2] != d_state or \
                x.shape[3] != length or channels % x.shape[1] != 0:
            raise ValueError(
                f'{name} must be (batch, N, L) or (batch, G, N, L) with G '
                f'dividing {channels} channels, N={d_state}, L={length}; got '
                f'{tuple(x.shape)}')
    if B.shape[1] != C.shape[1]:
        raise ValueError(f'B and C must have the same number of groups, got '
                         f'{B.shape[1]} and {C.shape[1]}')
    if D is not None and tuple(D.shape) != (channels, ):
        raise ValueError(f'D must be ({channels},), got {tuple(D.shape)}')
    if z is not None and z.shape != u.shape:
        raise ValueError(f'z must have the shape of u {tuple(u.shape)}, got '
                         f'{tuple(z.shape)}')
    if delta_bias is not None and tuple(delta_bias.shape) != (delta.shape[1],):
        raise ValueError(f'delta_bias must be ({delta.shape[1]},), got '
                         f'{tuple(delta_bias.shape)}')


def selective_scan(u,
                   delta,
                   A,
                   B,
                   C,
                   D=None,
                   z=None,
                   delta_bias=None,
                   delta_softplus=False,
                   out_float32=False,
                   return_last_state=False,
                   backend=None):
    """Mamba-1 selective scan with grouped B/C, differentiable in all tensors.

    For every batch b, channel d (group g = d // (channels / G)) and state n::

        dt[t]   = softplus(delta[b, d // r, t] + delta_bias[d // r])  (or without softplus)
        h[t, n] = exp(dt[t] * A[d, n]) * h[t-1, n] + dt[t] * B[b, g, n, t] * u[b, d, t]
        y[t]    = sum_n C[b, g, n, t] * h[t, n] + D[d] * u[b, d, t]
        out[t]  = y[t] * silu(z[b, d, t])

    with h[-1] = 0 and all math in fp32 (fp64 for fp64 inputs).

    Args:
        u (Tensor): (batch, channels, L), fp32, fp16, bf16 or fp64.
        delta (Tensor): (batch, channels / r, L), any float dtype. With r > 1
            ("oflex" delta groups) delta row j drives the r consecutive
            channels j*r ... j*r + r - 1.
        A (Tensor): (channels, N) state matrix diagonal (negative), fp32.
        B (Tensor): (batch, G, N, L) or (batch, N, L) (G = 1); channel d uses
            group d // (channels / G).
        C (Tensor): like B.
        D (Tensor, optional): (channels,) skip weight.
        z (Tensor, optional): (batch, channels, L) gate.
        delta_bias (Tensor, optional): (channels / r,) added to delta.
        delta_softplus (bool): apply softplus (threshold 20) to delta + bias.
        out_float32 (bool): return fp32 output instead of u's dtype.
        return_last_state (bool): also return the final state (batch,
            channels, N) in the compute dtype.
        backend (str, optional): 'reference', 'cpu', 'triton', 'cuda' or
            'auto'. None means ``$VSSM_SCAN_BACKEND`` if set, else 'auto'
            (cuda extension for CUDA tensors if built, else Triton for CUDA
            tensors; the cpu extension for CPU tensors if built; else
            reference). An explicit backend that cannot run raises a
            RuntimeError saying how to get it.

    Returns:
        Tensor | tuple[Tensor, Tensor]: out (batch, channels, L), plus the last
        state if ``return_last_state``.
    """
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    with _quiet_tracer():
        _check_inputs(u, delta, A, B, C, D, z, delta_bias)
        name = resolve_backend(backend, u.device)
        if torch.compiler.is_compiling() and name in COMPILABLE_BACKENDS:
            # An opaque custom op instead of tracing the chunk loop.
            out, last_state, _ = selective_scan_op(u, delta, A, B, C, D, z,
                                                   delta_bias,
                                                   bool(delta_softplus),
                                                   bool(out_float32), name)
        else:
            out, last_state = SelectiveScanFn.apply(u, delta, A, B, C, D, z,
                                                    delta_bias,
                                                    bool(delta_softplus),
                                                    bool(out_float32), name)
    return (out, last_state) if return_last_state else out
