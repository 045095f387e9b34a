// The scan orders' gather-sum for CPU tensors (gather_sum_cpu.cpp), bound in
// selective_scan_cpu.cpp as vssm_mm._C_cpu.gather_sum.
#pragma once

#include <ATen/ATen.h>

namespace vssm_cpu {

// out (B, R, C, J)[b, r, c, j] = sum_m src (B, S, C, P)[b, s, c, p], (s, p) = divmod(table (R, M,
// J)[r, m, j], P); entries of -1 contribute zero. out has src's dtype (sums in float32, float64
// for float64).
at::Tensor gather_sum(const at::Tensor &src, const at::Tensor &table);

}  // namespace vssm_cpu
