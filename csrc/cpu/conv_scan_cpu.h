// A depthwise convolution and SiLU fused with a scan-order gather, for CPU inference
// (conv_scan_cpu.cpp), bound in selective_scan_cpu.cpp as vssm_mm._C_cpu.dwconv_silu_scan.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "scan_cpu.h"

namespace vssm_cpu {

// x (B, H, W, C) float32 with contiguous channels and rows (a channel-last map), weight
// (C, 1, k, k) (depthwise, odd k, stride 1, zero padding k / 2), bias (C,) optional, index
// (R, J) int64 of row-major pixels or -1 -> out (B, R, C, J) contiguous:
// out[b, r, c, j] = silu(conv(x)[b, index[r, j], c]), 0 where index[r, j] = -1. `kernels` gives
// the pixel routine and the block transposes.
at::Tensor dwconv_silu_scan(const Kernels *kernels, const at::Tensor &x, const at::Tensor &weight,
                            const std::optional<at::Tensor> &bias, const at::Tensor &index);

}  // namespace vssm_cpu
