"""The 'cuda' backend: an adapter over the ``vssm_mm._C`` extension built from ``csrc/``.

Build it with ``FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=... pip install -e . --no-build-isolation``.
The extension exposes (docs/selective_scan.md, "The cuda backend"):

* ``selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32)
  -> [out, x]``: u, delta, z (batch, channels, L); B, C (batch, G, N, L), all in one dtype
  (fp32, fp16 or bf16); A (channels, N), D (channels), delta_bias (delta channels) fp32,
  optional ones None; ``out`` gated by silu(z) when z is given; ``x`` (batch, channels,
  n_chunks, N) fp32, the state after every chunk of ``chunk_length(L)`` tokens (its last
  chunk is the last state).
* ``selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, delta_softplus)
  -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]``: None for absent inputs, gradients in
  the inputs' dtypes; ``dout`` fp32 or u's dtype.

The kernels take u, delta, B, C and z in one dtype. When the interface hands over mixed dtypes
(allowed, for example bf16 u with fp32 B and C), this adapter runs the kernels in fp32 rather
than rounding the wider inputs to u's dtype: the result then matches the reference backend,
which computes in fp32, and fp32 B/C get unrounded fp32 dB/dC. The output keeps u's dtype (fp32
with out_float32); A, D and delta_bias go in as fp32; every gradient comes back in its input's
dtype.

Gradients through the returned last state are not supported by the kernels; the adapter
raises instead of silently dropping them.
"""
import importlib

import torch

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _ext():
    return importlib.import_module('vssm_mm._C')


def chunk_length(length):
    """Tokens per saved state for a sequence of ``length`` tokens (as the kernels use)."""
    return 128 if length <= 128 else 512 if length <= 512 else 2048


def num_chunks(length):
    return -(-length // chunk_length(length))


def saved_state_spec(u, A, B):
    """(shape, dtype) of the one tensor :func:`forward` saves for backward."""
    batch, channels, length = u.shape
    return (batch, channels, num_chunks(length), A.shape[1]), torch.float32


def _check_dtype(u):
    if u.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"backend='cuda' runs fp32, fp16 and bf16 inputs, got {u.dtype}; use "
                        "backend='reference' (for example for float64 gradcheck)")


def kernel_dtype(u, delta, B, C, z):
    """The one dtype the kernels run u, delta, B, C and z in: u's when all share it, else fp32
    (never a rounding of a wider input to a narrower dtype)."""
    _check_dtype(u)
    others = [x.dtype for x in (delta, B, C, z) if x is not None]
    return u.dtype if all(dtype == u.dtype for dtype in others) else torch.float32


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    """Contiguous tensors in the dtypes the kernels take."""
    dtype = kernel_dtype(u, delta, B, C, z)

    def like(x, to):
        return None if x is None else x.to(to).contiguous()

    return (like(u, dtype), like(delta, dtype), like(A, torch.float32), like(B, dtype),
            like(C, dtype), like(D, torch.float32), like(z, dtype),
            like(delta_bias, torch.float32))


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32):
    """Backend contract: see :mod:`.backends`."""
    args = _prepare(u, delta, A, B, C, D, z, delta_bias)
    out, states = _ext().selective_scan_fwd(*args, bool(delta_softplus), bool(out_float32))
    if not out_float32 and out.dtype != u.dtype:  # ran in fp32 for mixed input dtypes
        out = out.to(u.dtype)
    return out, states[:, :, -1], (states, ), None


def backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved,
             meta):
    """Backend contract: see :mod:`.backends`."""
    # (torch.compile's autograd may hand over zeros for an unused last state)
    if dlast_state is not None and bool(dlast_state.any()):
        raise NotImplementedError(
            "backend='cuda' cannot backpropagate through the returned last state; use "
            "backend='reference' or 'triton' for that")
    if dout is None:
        raise RuntimeError('selective_scan backward got no output gradient')
    (states, ) = saved
    args = _prepare(u, delta, A, B, C, D, z, delta_bias)
    if dout.dtype not in (torch.float32, args[0].dtype):
        dout = dout.float()
    grads = _ext().selective_scan_bwd(*args, dout.contiguous(), states, bool(delta_softplus))
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(None if g is None or x is None else g.to(x.dtype)
                 for g, x in zip(grads, inputs))
