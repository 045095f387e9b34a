"""The 'cpu' backend: an adapter over the ``vssm_mm._C_cpu`` extension built from ``csrc/cpu/``.

Every ``pip install -e . --no-build-isolation`` with a C++ compiler builds it; ``auto`` picks it
for CPU tensors. The extension exposes (docs/selective_scan.md, "The cpu backend"):

* ``selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32)
  -> [out, states]``: any mix of fp32/fp16/bf16 tensors (computed in fp32), optional ones None;
  ``states`` (batch, channels, n_chunks, N) fp32 is the state after every ``chunk_length()``
  tokens, its last chunk the last state.
* ``selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, dlast_state, states,
  delta_softplus) -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]``, None for absent inputs,
  each gradient in its input's dtype.

float64 inputs (gradcheck) and more than ``MAX_D_STATE`` states run on the reference backend
instead, which this adapter calls.
"""
import contextlib
import importlib

import torch

from . import reference

_ext = None
MAX_D_STATE = 256  # kMaxDState in csrc/cpu/scan_cpu.h


def extension():
    """The ``vssm_mm._C_cpu`` module (ImportError when it was not built)."""
    global _ext
    if _ext is None:
        _ext = importlib.import_module('vssm_mm._C_cpu')
    return _ext


def extension_with(name):
    """``vssm_mm._C_cpu`` when it is built and binds ``name`` (an older build may not), else
    None: the callers of its kernels outside the scan then run torch's ops."""
    try:
        ext = extension()
    except ImportError:
        return None
    return ext if hasattr(ext, name) else None


@contextlib.contextmanager
def row_kernels(enabled):
    """Inside the block, use (``True``, the default) or do not use the row kernels, which run
    where N is a multiple of the vector width (docs/selective_scan.md, "The cpu backend");
    ``False`` runs the lane kernels for every N, to compare the two."""
    ext = extension()
    before = ext.row_kernels()
    ext.set_row_kernels(bool(enabled))
    try:
        yield
    finally:
        ext.set_row_kernels(before)


def _on_reference(u, A):
    """float64 (gradcheck) and very large N run on the reference backend."""
    return u.dtype == torch.float64 or A.shape[1] > MAX_D_STATE


def saved_state_spec(u, A, B):
    """(shape, dtype) of the one tensor :func:`forward` saves for backward."""
    if _on_reference(u, A):
        return reference.saved_state_spec(u, A, B)
    batch, channels, length = u.shape
    chunk = extension().chunk_length()
    return (batch, channels, -(-length // chunk), A.shape[1]), torch.float32


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32):
    """Backend contract: see :mod:`.backends`."""
    if _on_reference(u, A):
        return reference.forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                 out_float32)
    out, states = extension().selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                                 bool(delta_softplus), bool(out_float32))
    return out, states[:, :, -1], (states, ), None


def backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved,
             meta):
    """Backend contract: see :mod:`.backends`."""
    if _on_reference(u, A):
        return reference.backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
                                  delta_softplus, saved, meta)
    (states, ) = saved
    if dout is None:
        dout = torch.zeros_like(u, dtype=torch.float32)
    grads = extension().selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout,
                                           dlast_state, states, bool(delta_softplus))
    return tuple(grads)
