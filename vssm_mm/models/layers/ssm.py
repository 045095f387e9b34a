"""The selective-scan SSM shared by every family: parameters, their init, and the call.

A block with ``K`` scan directions (or ``K`` parameter groups) holds, VMamba style:

* ``x_proj_weight`` (K, R + 2N, d): per direction, token -> (dt_low, B, C);
* ``dt_projs_weight`` (K, d, R) and ``dt_projs_bias`` (K, d): dt_low -> delta;
* ``A_logs`` (K*d, N) with A = -exp(A_logs), and ``Ds`` (K*d,): the skip.

:func:`scan_directions` takes ``K`` sequences of ``d`` channels, projects them and runs one
selective scan with B/C shared by the ``d`` channels of each direction.
"""
import math
from typing import Optional

import torch
from torch import nn

from vssm_mm.ops.selective_scan import selective_scan


class SSMParams(nn.Module):
    """Holds the SSM parameters of ``num_groups`` directions as plain ``nn.Parameter`` s.

    The parameters are registered on the *parent* module (``register_on``) rather than here so
    that their state-dict names match the official checkpoints (``op.A_logs`` etc.).
    """


def init_ssm_params(module: nn.Module, num_groups: int, d_inner: int, d_state: int, dt_rank: int,
                    dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                    dt_scale: float = 1.0) -> None:
    """Create and initialise the SSM parameters on ``module`` (Mamba's "v0" init).

    Args:
        module: The module that owns the parameters (names as in the official checkpoints).
        num_groups: Number of directions / parameter groups ``K``.
        d_inner: Channels per direction ``d``.
        d_state: State size ``N``.
        dt_rank: Rank ``R`` of the delta projection.
    """
    k, d, n, r = num_groups, d_inner, d_state, dt_rank
    module.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
    module.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
    module.dt_projs_bias = nn.Parameter(torch.empty(k, d))
    module.A_logs = nn.Parameter(torch.empty(k * d, n))
    module.Ds = nn.Parameter(torch.empty(k * d))
    module._ssm_init_args = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                                 dt_scale=dt_scale)
    reset_ssm_params(module)


@torch.no_grad()
def reset_ssm_params(module: nn.Module) -> None:
    """(Re-)initialise the SSM parameters created by :func:`init_ssm_params`."""
    args = module._ssm_init_args
    k, d, r = module.dt_projs_weight.shape
    n = module.A_logs.shape[1]
    # x_proj: nn.Linear's default (kaiming-uniform with a=sqrt(5)) = U(-1/sqrt(d), 1/sqrt(d)).
    bound = 1.0 / math.sqrt(d)
    module.x_proj_weight.uniform_(-bound, bound)
    dt_std = r**-0.5 * args['dt_scale']
    module.dt_projs_weight.uniform_(-dt_std, dt_std)
    # delta bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max].
    dt = torch.exp(torch.rand(k, d) * (math.log(args['dt_max']) - math.log(args['dt_min'])) +
                   math.log(args['dt_min'])).clamp(min=args['dt_init_floor'])
    module.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    module.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1))
    module.Ds.fill_(1.0)


def scan_directions(xs: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                    dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor,
                    z: Optional[torch.Tensor] = None, out_float32: bool = True,
                    force_fp32: bool = True) -> torch.Tensor:
    """Project ``K`` sequences and run one selective scan over them.

    Args:
        xs: ``(B, K, d, L)`` sequences, one per direction/group.
        x_proj_weight: ``(K, R + 2N, d)``.
        dt_projs_weight: ``(K, d, R)``.
        dt_projs_bias: ``(K, d)`` (or ``(K*d,)``).
        A_logs: ``(K*d, N)``.
        Ds: ``(K*d,)``.
        z: Optional ``(B, K*d, L)`` gate (``out * silu(z)``).
        out_float32: Return fp32 (else the dtype of ``xs``).
        force_fp32: Cast the scan inputs to fp32 first (what the fp32-scan families do
            under AMP).

    Returns:
        ``(B, K, d, L)`` scan outputs.
    """
    batch, k, d, length = xs.shape
    n = A_logs.shape[1]
    r = dt_projs_weight.shape[2]
    x_dbl = torch.einsum('bkdl,kcd->bkcl', xs, x_proj_weight.to(xs.dtype))
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum('bkrl,kdr->bkdl', dts, dt_projs_weight.to(xs.dtype))
    u = xs.reshape(batch, k * d, length)
    delta = dts.reshape(batch, k * d, length)
    if force_fp32:
        u, delta, Bs, Cs = u.float(), delta.float(), Bs.float(), Cs.float()
        z = z.float() if z is not None else None
    A = -torch.exp(A_logs.float())
    out = selective_scan(u, delta, A, Bs.contiguous(), Cs.contiguous(), D=Ds.float(), z=z,
                         delta_bias=dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                         out_float32=out_float32)
    return out.view(batch, k, d, length)
