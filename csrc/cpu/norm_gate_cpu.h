// LayerNorm kernels for CPU inference (norm_gate_cpu.cpp), bound in selective_scan_cpu.cpp as
// vssm_mm._C_cpu.norm_gate_channels and vssm_mm._C_cpu.layer_norm_mean.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "scan_cpu.h"

namespace vssm_cpu {

// x (B, C, J) float32 -> out (B, C, J): out[b, :, j] = layer_norm(x[b, :, j]) * w + bias, times
// silu(z[b, :, j]) with z (B, C, J); weight, bias (C,) and z optional. x and z may have any
// batch and channel strides with contiguous pixels; z may also have contiguous channels (a
// transposed view of a channel-last (B, J, C) map), transposed block by block on the way.
// `kernels` gives the block routines.
at::Tensor norm_gate_channels(const Kernels *kernels, const at::Tensor &x,
                              const std::optional<at::Tensor> &weight,
                              const std::optional<at::Tensor> &bias, double eps,
                              const std::optional<at::Tensor> &z);

// x (B, T, C) float32 -> (B, C): the mean over the T tokens of layer_norm(x[b, t, :]) * weight +
// bias (weight, bias (C,) optional), without writing the normalised tokens. Rows must be
// contiguous (any batch and token strides). Sums run in a fixed order: the result does not
// depend on the number of threads.
at::Tensor layer_norm_mean(const Kernels *kernels, const at::Tensor &x,
                           const std::optional<at::Tensor> &weight,
                           const std::optional<at::Tensor> &bias, double eps);

}  // namespace vssm_cpu
