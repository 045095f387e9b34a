// The start of EfficientVMamba's mixer in CPU inference, one pass where torch's ops take three:
// the depthwise convolution of the channel-last map, the SiLU, and the gather into the scan
// orders' channels-first sequences (vssm_mm/ops/conv_scan.py). Each token is computed where it
// is gathered, so a pixel that several directions read is computed several times: this pays
// for scan orders that read each pixel once (EfficientVMamba's four sub-grids).
#include "conv_scan_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace vssm_cpu {

// Tokens per task: the task's (tokens, C) tile is computed channel-last and written to the C
// rows of the output transposed, 256 bytes per row.
constexpr int64_t kConvTokens = 64;

at::Tensor dwconv_silu_scan(const Kernels *kernels, const at::Tensor &x, const at::Tensor &weight,
                            const std::optional<at::Tensor> &bias, const at::Tensor &index) {
  TORCH_CHECK(kernels != nullptr && kernels->dwconv_silu_pixels != nullptr,
              "dwconv_silu_scan (cpu): no kernels");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              "dwconv_silu_scan (cpu): x must be a float32 (B, H, W, C) CPU tensor, got ",
              x.scalar_type(), " ", x.sizes(), " on ", x.device());
  const int64_t B = x.size(0), H = x.size(1), Wd = x.size(2), C = x.size(3);
  TORCH_CHECK((C <= 1 || x.stride(3) == 1) && (Wd <= 1 || x.stride(2) == C) &&
                  (H <= 1 || x.stride(1) == Wd * C),
              "dwconv_silu_scan (cpu): x must be a channel-last map, each image's H * W * C "
              "values contiguous; got strides ", x.strides());
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat &&
                  weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              "dwconv_silu_scan (cpu): weight must be a float32 depthwise (", C,
              ", 1, k, k) kernel with odd k, got ", weight.scalar_type(), " ", weight.sizes());
  const int64_t k = weight.size(2);
  at::Tensor b;
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat &&
                    bias->dim() == 1 && bias->size(0) == C,
                "dwconv_silu_scan (cpu): bias must be a float32 (", C, ",) CPU tensor, got ",
                bias->scalar_type(), " ", bias->sizes());
    b = bias->contiguous();
  }
  TORCH_CHECK(index.device().is_cpu() && index.scalar_type() == at::kLong && index.dim() == 2,
              "dwconv_silu_scan (cpu): index must be an int64 (R, J) CPU tensor, got ",
              index.scalar_type(), " ", index.sizes());
  const at::Tensor idx = index.contiguous();
  const int64_t R = idx.size(0), J = idx.size(1);
  const int64_t *ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < R * J; ++i)
    TORCH_CHECK(ip[i] >= -1 && ip[i] < H * Wd, "dwconv_silu_scan (cpu): index entry ", ip[i],
                " is outside [-1, ", H * Wd, ")");
  // Taps channel-innermost: (k * k, C).
  const at::Tensor taps = weight.reshape({C, k * k}).t().contiguous();
  at::Tensor out = at::empty({B, R, C, J}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const float *x_p = x.data_ptr<float>(), *w_p = taps.data_ptr<float>();
  const float *b_p = b.defined() ? b.data_ptr<float>() : nullptr;
  float *out_p = out.data_ptr<float>();
  const int64_t xs_b = x.stride(0), blocks = (J + kConvTokens - 1) / kConvTokens;
  at::parallel_for(0, B * R * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(kConvTokens * C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / (R * blocks), ri = task / blocks % R;
      const int64_t j0 = task % blocks * kConvTokens, n = std::min(kConvTokens, J - j0);
      kernels->dwconv_silu_pixels(x_p + bi * xs_b, H, Wd, C, w_p, b_p, k, ip + ri * J + j0, n,
                                  tile.data(), C);
      kernels->transpose_block(tile.data(), C, n, C, out_p + (bi * R + ri) * C * J + j0, J);
    }
  });
  return out;
}

}  // namespace vssm_cpu
