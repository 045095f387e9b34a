"""``torch.library`` registration, so that ``torch.compile`` sees one opaque op.

In eager mode :func:`.interface.selective_scan` uses
:class:`.interface.SelectiveScanFn` (a stable name for jit-trace FLOP
counters). Under ``torch.compile`` it calls ``torch.ops.vssm_mm.selective_scan``
instead: dynamo would otherwise trace through the reference's Python chunk
loop (or stop at the extensions' calls) and unroll it into a huge graph. The
fake (meta) implementations give output shapes without running anything (each
backend declares the shape of the tensor it saves, ``saved_state_spec``); they
need static shapes.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .backends import load_backend
from .common import compute_dtype

# Every backend saves exactly one tensor for backward and no meta.
COMPILABLE_BACKENDS = ('reference', 'cpu', 'triton', 'cuda')


@torch.library.custom_op('vssm_mm::selective_scan', mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                      C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                      delta_bias: Optional[Tensor], delta_softplus: bool,
                      out_float32: bool,
                      backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, last_state, saved states); arguments as ``selective_scan``."""
    out, last_state, saved, _ = load_backend(backend).forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32)
    # Outputs of a custom op must not alias each other.
    return out, last_state.clone(), saved[0]


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32,
      backend):
    dtype = compute_dtype(u)
    batch, channels, _ = u.shape
    d_state = A.shape[1]
    out = u.new_empty(u.shape, dtype=dtype if out_float32 else u.dtype)
    last_state = u.new_empty((batch, channels, d_state), dtype=dtype)
    shape, saved_dtype = load_backend(backend).saved_state_spec(u, A, B)
    return out, last_state, u.new_empty(shape, dtype=saved_dtype)


@torch.library.custom_op('vssm_mm::selective_scan_backward', mutates_args=())
def selective_scan_backward_op(dout: Optional[Tensor],
                               dlast_state: Optional[Tensor], u: Tensor,
                               delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Optional[Tensor], z: Optional[Tensor],
                               delta_bias: Optional[Tensor], saved: Tensor,
                               delta_softplus: bool,
                               backend: str) -> List[Tensor]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias); empty for None."""
    grads = load_backend(backend).backward(dout, dlast_state, u, delta, A, B,
                                           C, D, z, delta_bias,
                                           delta_softplus, (saved, ), None)
    return [g if g is not None else u.new_empty(0) for g in grads]


@selective_scan_backward_op.register_fake
def _(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, saved,
      delta_softplus, backend):
    return [
        torch.empty_like(x) if x is not None else u.new_empty(0)
        for x in (u, delta, A, B, C, D, z, delta_bias)
    ]


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, _,
     backend) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus, ctx.backend = delta_softplus, backend


def _backward(ctx, dout, dlast_state, _):
    u, delta, A, B, C, D, z, delta_bias, saved = ctx.saved_tensors
    grads = selective_scan_backward_op(dout, dlast_state, u, delta, A, B, C,
                                       D, z, delta_bias, saved,
                                       ctx.delta_softplus, ctx.backend)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    grads = [g if x is not None else None for g, x in zip(grads, inputs)]
    return (*grads, None, None, None)


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)
