"""The selective-scan SSM that every family's mixer composes.

:class:`SelectiveSSM` owns the parameters of ``K`` scan directions (or ``K`` channel groups),
stacked along a leading ``K`` axis, and their one initialisation (Mamba's). It takes ``K``
sequences that a scan order produced, ``(B, K, d, L)``, projects each token to
``(delta, B, C)`` with its direction's weights and runs one :func:`selective_scan` over all
``K * d`` channels. It knows nothing about images; putting the outputs back on the map is the
scan order's job (its inverse).

Dtype policy: the scan computes in float32, except that float64 inputs stay float64. Under
autocast (fp16 / bf16) the projections run in the autocast dtype, then ``u``, ``delta``,
``B``, ``C`` and the gate are cast to float32 for the recurrence, and the output is float32;
a float64 model (``model.double()``) runs the whole SSM in float64.
"""
import math
from typing import Optional

import torch
from torch import nn

from vssm_mm.ops.norm_gate import compiled_inference
from vssm_mm.ops.selective_scan import selective_scan
from vssm_mm.ops.selective_scan.backends import resolve_backend
from vssm_mm.ops.selective_scan.cpu_backend import extension_with


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the SSM recurrence runs in for inputs of ``dtype`` (see the module policy)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class SelectiveSSM(nn.Module):
    """Stacked SSM parameters of ``K`` directions / groups and the scan over them.

    Parameters (``d`` channels per direction, state size ``N``, delta rank ``R``):

    * ``x_proj_weight`` ``(K, R + 2N, d)``: token -> (delta_low, B, C);
    * ``dt_proj_weight`` ``(K, d, R)`` and ``dt_proj_bias`` ``(K, d)``: delta_low -> delta;
    * ``A_log`` ``(K * d, N)`` with ``A = -exp(A_log)``;
    * ``D`` ``(K * d,)``: the skip connection.

    Args:
        num_directions (int): ``K``.
        d_inner (int): Channels per direction ``d``.
        d_state (int): State size ``N``.
        dt_rank (int): Rank ``R`` of the delta projection.
        dt_min, dt_max (float): Range of the initial step sizes (log-uniform).
        dt_init_floor (float): Smallest initial step size.
    """

    def __init__(self, num_directions: int, d_inner: int, d_state: int, dt_rank: int,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        k, d, n, r = num_directions, d_inner, d_state, dt_rank
        self.num_directions, self.d_inner, self.d_state, self.dt_rank = k, d, n, r
        self.dt_range = (dt_min, dt_max, dt_init_floor)
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, d))
        self.A_log = nn.Parameter(torch.empty(k * d, n))
        self.D = nn.Parameter(torch.empty(k * d))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation (the "v0" init of VMamba's SS2D)."""
        if self.A_log.is_meta:
            return
        dt_min, dt_max, floor = self.dt_range
        # x_proj: nn.Linear's default init, U(-1/sqrt(d), 1/sqrt(d)).
        bound = 1.0 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        dt_std = self.dt_rank**-0.5
        self.dt_proj_weight.uniform_(-dt_std, dt_std)
        # delta bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max].
        dt = torch.exp(torch.rand(self.num_directions, self.d_inner) *
                       (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.reset_A_D()

    @torch.no_grad()
    def reset_A_D(self) -> None:
        """``A = -(1, 2, ..., N)`` for every channel and ``D = 1`` (S4D-real)."""
        n = self.d_state
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(
            self.A_log.shape[0], 1))
        self.D.fill_(1.0)

    def forward(self, xs: torch.Tensor, z: Optional[torch.Tensor] = None,
                directions: Optional[slice] = None) -> torch.Tensor:
        """Scan ``K`` sequences (or those of ``directions``).

        Args:
            xs: ``(B, K, d, L)``, one sequence per direction / group, in scan order.
            z: Optional ``(B, K * d, L)`` gate: the output is multiplied by ``silu(z)``.
            directions: Scan only these directions (a slice of the ``K``; ``xs`` then holds
                that many sequences). For directions whose sequences differ in length, which
                would otherwise have to be padded to a common length and scanned in full.

        Returns:
            ``(B, K, d, L)`` in float32 (float64 for float64 inputs).
        """
        first, stop, step = (directions or slice(None)).indices(self.num_directions)
        if step != 1:
            raise ValueError(f'directions must be a contiguous slice, got {directions}')
        if tuple(xs.shape[1:3]) != (stop - first, self.d_inner):
            raise ValueError(f'SelectiveSSM expects (B, {stop - first}, {self.d_inner}, L) '
                             f'sequences, got {tuple(xs.shape)}')
        d = self.d_inner
        return scan_sequences(xs, self.x_proj_weight[first:stop],
                              self.dt_proj_weight[first:stop], self.dt_proj_bias[first:stop],
                              self.A_log[first * d:stop * d], self.D[first * d:stop * d], z)

    def extra_repr(self) -> str:
        return (f'num_directions={self.num_directions}, d_inner={self.d_inner}, '
                f'd_state={self.d_state}, dt_rank={self.dt_rank}')


def _counting(x: torch.Tensor) -> bool:
    """Whether FLOPs are being counted: a jit trace (fvcore) or the meta-device counter."""
    return torch.jit.is_tracing() or x.device.type == 'meta'


def _lowrank_kernel(x_dbl: torch.Tensor, *tensors: Optional[torch.Tensor]):
    """``vssm_mm._C_cpu`` when the scan may take delta in low rank: float32 CPU inference
    (``x_dbl`` included) on the cpu backend; else None."""
    if not compiled_inference(x_dbl, *tensors):
        return None
    if resolve_backend(None, x_dbl.device) != 'cpu':
        return None
    return extension_with('selective_scan_fwd_lowrank')


def scan_sequences(xs: torch.Tensor, x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor,
                   dt_proj_bias: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor,
                   z: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The computation of :meth:`SelectiveSSM.forward` on explicit parameters (same shapes)."""
    batch, k, d, length = xs.shape
    n, r = A_log.shape[1], dt_proj_weight.shape[2]
    if _counting(xs):
        # FLOP counters: the papers count these projections as the official code writes them,
        # einsums (fvcore's rule: numpy's contraction cost as it prints it, rounded to four
        # digits), and docs/complexity.md reproduces those counts exactly.
        x_dbl = torch.einsum('bkdl,kcd->bkcl', xs, x_proj_weight.to(xs.dtype))
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = torch.einsum('bkrl,kdr->bkdl', dts, dt_proj_weight.to(xs.dtype))
    else:
        # Batched over (B, K) with the weights broadcast: the sequences are not permuted or
        # copied (einsum copies them twice; 7% of EfficientVMamba-T's CPU inference).
        x_dbl = torch.matmul(x_proj_weight.to(xs.dtype), xs)  # (B, K, R + 2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        ext = _lowrank_kernel(x_dbl, xs, dt_proj_weight, dt_proj_bias, A_log, D, z)
        if ext is not None:
            # float32 CPU inference on the cpu backend: the kernel computes each token's delta
            # from the rank-R projection where it needs it, so the (B, K, d, L) delta is never
            # written and read back (the same values to float32 rounding).
            out = ext.selective_scan_fwd_lowrank(
                xs.reshape(batch, k * d, length), dts, dt_proj_weight, -torch.exp(A_log),
                Bs.contiguous(), Cs.contiguous(), D, z, dt_proj_bias.reshape(-1), True)
            return out.view(batch, k, d, length)
        dts = torch.matmul(dt_proj_weight.to(xs.dtype), dts)  # (B, K, d, L)
    dtype = compute_dtype(xs.dtype)
    u = xs.reshape(batch, k * d, length).to(dtype)
    delta = dts.reshape(batch, k * d, length).to(dtype)
    z = z.to(dtype) if z is not None else None
    out = selective_scan(u, delta, -torch.exp(A_log.to(dtype)), Bs.to(dtype).contiguous(),
                         Cs.to(dtype).contiguous(), D=D.to(dtype), z=z,
                         delta_bias=dt_proj_bias.reshape(-1).to(dtype), delta_softplus=True,
                         out_float32=False)
    return out.view(batch, k, d, length)
