// The scan orders' gather-sum for CPU tensors (vssm_mm/ops/scan_orders/gather.py): one pass over
// the output instead of torch's permute, index_select and permute back.
//
// out[b, r, c, j] = sum_m src[b, s, c, p], (s, p) = divmod(table[r, m, j], P), -1 entries
// contributing zero; src (B, S, C, P), table (R, M, J) int64, out (B, R, C, J) in src's dtype,
// sums over m in float32 (float64 for float64) rounded once.
#include "gather_sum_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace vssm_cpu {
namespace {

template <typename scalar_t>
void gather_sum_kernel(const scalar_t *src, const int64_t *offsets, scalar_t *out, int64_t B,
                       int64_t C, int64_t stride_b, int64_t stride_c, int64_t R, int64_t M,
                       int64_t J) {
  using acc_t = at::opmath_type<scalar_t>;
  // One task is the (b, c) planes of a channel range: the source plane src[b, :, c, :] is read
  // R * M * J times, from the caches after the first touch (also for a channel-last source,
  // whose neighbouring channels share its cache lines).
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, R * M * J));
  at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      const scalar_t *plane = src + b * stride_b + c * stride_c;
      for (int64_t r = 0; r < R; ++r) {
        scalar_t *row = out + ((b * R + r) * C + c) * J;
        const int64_t *off = offsets + r * M * J;
        if (M == 1) {
          for (int64_t j = 0; j < J; ++j) row[j] = off[j] >= 0 ? plane[off[j]] : scalar_t(0);
        } else {
          for (int64_t j = 0; j < J; ++j) {
            acc_t acc = 0;
            for (int64_t m = 0; m < M; ++m) {
              const int64_t o = off[m * J + j];
              if (o >= 0) acc += static_cast<acc_t>(plane[o]);
            }
            row[j] = static_cast<scalar_t>(acc);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor gather_sum(const at::Tensor &src_in, const at::Tensor &table) {
  TORCH_CHECK(src_in.device().is_cpu() && table.device().is_cpu(),
              "gather_sum (cpu): src and table must be CPU tensors; use backend='triton' or "
              "'torch' for GPU tensors");
  TORCH_CHECK(src_in.dim() == 4, "gather_sum (cpu): src must be (B, S, C, P), got ",
              src_in.sizes());
  TORCH_CHECK(table.dim() == 3 && table.scalar_type() == at::kLong,
              "gather_sum (cpu): table must be an int64 (R, M, J) tensor, got ",
              table.scalar_type(), " ", table.sizes());
  // Any strides (a channel-last map viewed as (B, 1, C, H * W) is read in place).
  const at::Tensor &src = src_in;
  const at::Tensor tab = table.contiguous();
  const int64_t B = src.size(0), S = src.size(1), C = src.size(2), P = src.size(3);
  const int64_t R = tab.size(0), M = tab.size(1), J = tab.size(2);
  // Table entries -> offsets into a (b, c) plane: s * stride_s + p * stride_p, -1 kept.
  std::vector<int64_t> offsets(R * M * J);
  const int64_t *t = tab.data_ptr<int64_t>();
  for (int64_t i = 0; i < R * M * J; ++i) {
    TORCH_CHECK(t[i] >= -1 && t[i] < S * P, "gather_sum (cpu): table entry ", t[i],
                " is outside [-1, ", S * P, ")");
    offsets[i] = t[i] < 0 ? -1 : (t[i] / P) * src.stride(1) + (t[i] % P) * src.stride(3);
  }
  at::Tensor out = at::empty({B, R, C, J}, src.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "gather_sum", [&] {
    gather_sum_kernel<scalar_t>(src.data_ptr<scalar_t>(), offsets.data(),
                                out.data_ptr<scalar_t>(), B, C, src.stride(0), src.stride(2), R,
                                M, J);
  });
  return out;
}

}  // namespace vssm_cpu
