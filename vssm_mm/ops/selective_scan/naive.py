"""Token-by-token selective scan: the test oracle and benchmark baseline."""
import torch
import torch.nn.functional as F

from .common import (compute_dtype, delta_pre_activation,
                     expand_delta_groups)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         out_float32=False, return_last_state=False):
    """Token-by-token selective scan, differentiated by autograd.

    Same arguments and result as :func:`vssm_mm.ops.selective_scan.selective_scan`
    (without ``backend``). Slow and memory hungry (autograd keeps every state);
    it exists as the test oracle and the benchmark baseline.
    """
    dtype = compute_dtype(u)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    per_group = channels // groups

    delta = delta_pre_activation(delta, delta_bias, dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    delta = expand_delta_groups(delta, channels)
    u_f = u.to(dtype)
    A_g = A.to(dtype).view(groups, per_group, d_state)

    h = u_f.new_zeros(batch, groups, per_group, d_state)
    ys = []
    # unbind (not indexing) so that autograd's backward is one stack, not a
    # full-size zero tensor per token.
    for dt_t, u_t, B_t, C_t in zip(
            delta.view(batch, groups, per_group, length).unbind(-1),
            u_f.view(batch, groups, per_group, length).unbind(-1),
            B.to(dtype).unbind(-1),
            C.to(dtype).unbind(-1)):
        h = torch.exp(dt_t[..., None] * A_g) * h + \
            (dt_t * u_t)[..., None] * B_t[:, :, None, :]
        ys.append((h * C_t[:, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(batch, channels, length)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_f
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y if out_float32 else y.to(u.dtype)
    if return_last_state:
        return out, h.reshape(batch, channels, d_state)
    return out
