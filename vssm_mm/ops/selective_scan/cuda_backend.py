"""The 'cuda' backend: a thin adapter over the ``vssm_mm._C`` extension.

The extension (built from ``csrc/`` with
``FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=... pip install -e . --no-build-isolation``)
is expected to expose the VMamba "oflex"-style entry points, plus z:

* ``selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
  out_float32) -> [out, x]``: u, delta, z (batch, channels, L) with a
  contiguous last dim; B, C (batch, G, N, L); A (channels, N), D (channels),
  delta_bias (delta channels) fp32, optional ones as None; ``out`` gated by
  silu(z) when z is given; ``x`` (batch, channels, n_chunks, N) fp32, the
  state at the end of every chunk (its last chunk is the last state).
* ``selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x,
  delta_softplus) -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]`` with
  None for absent inputs and gradients in the inputs' dtypes.

Gradients through the returned last state are not supported by that
interface; this adapter raises instead of silently dropping them.
"""
import importlib


def _ext():
    return importlib.import_module('vssm_mm._C')


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32):
    """Backend contract: see :func:`.reference.forward`."""
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    z = z.contiguous() if z is not None else None
    out, states = _ext().selective_scan_fwd(u, delta, A, B, C, D, z,
                                            delta_bias, bool(delta_softplus),
                                            bool(out_float32))
    return out, states[:, :, -1], (states, ), None


def backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
             delta_softplus, saved, meta):
    """Backend contract: see :func:`.reference.backward`."""
    if dlast_state is not None:
        raise NotImplementedError(
            "backend='cuda' cannot backpropagate through the returned last "
            "state; use backend='reference' or 'triton' for that")
    (states, ) = saved
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    z = z.contiguous() if z is not None else None
    if dout is None:
        raise RuntimeError('selective_scan backward got no output gradient')
    return tuple(_ext().selective_scan_bwd(u, delta, A, B, C, D, z,
                                           delta_bias, dout, states,
                                           bool(delta_softplus)))
