// LayerNorm kernels for CPU tensors in inference (vssm_mm/ops/norm_gate.py), each one pass over
// a map where torch's ops take several:
// * norm_gate_channels: LayerNorm over the channels of a channels-first map, then the optional
//   SiLU gate (a channel-last copy, the norm, the SiLU and the product otherwise);
// * layer_norm_mean: the mean over tokens of the LayerNorm of each token (the norm writes the
//   normalised map, the mean reads it back otherwise).
#include "norm_gate_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace vssm_cpu {
namespace {

// A LayerNorm's optional weight or bias: a float32 (C,) CPU tensor, made contiguous; undefined
// when absent.
at::Tensor affine(const std::optional<at::Tensor> &t, int64_t C, const char *op,
                  const char *name) {
  if (!t) return at::Tensor();
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 &&
                  t->size(0) == C,
              op, " (cpu): ", name, " must be a float32 (", C, ",) CPU tensor, got ",
              t->scalar_type(), " ", t->sizes());
  return t->contiguous();
}

}  // namespace

at::Tensor norm_gate_channels(const Kernels *kernels, const at::Tensor &x_in,
                              const std::optional<at::Tensor> &weight,
                              const std::optional<at::Tensor> &bias, double eps,
                              const std::optional<at::Tensor> &z_in) {
  TORCH_CHECK(kernels != nullptr && kernels->norm_gate_channels != nullptr,
              "norm_gate_channels (cpu): no kernels");
  TORCH_CHECK(x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat && x_in.dim() == 3,
              "norm_gate_channels (cpu): x must be a float32 (B, C, J) CPU tensor, got ",
              x_in.scalar_type(), " ", x_in.sizes(), " on ", x_in.device());
  const int64_t B = x_in.size(0), C = x_in.size(1), J = x_in.size(2);
  // Pixels must be contiguous; batch and channel strides are free (a chunk of a larger map).
  auto pixels_contiguous = [](const at::Tensor &t) {
    return t.size(2) <= 1 || t.stride(2) == 1;
  };
  const at::Tensor x = pixels_contiguous(x_in) ? x_in : x_in.contiguous();
  const at::Tensor w = affine(weight, C, "norm_gate_channels", "weight");
  const at::Tensor b = affine(bias, C, "norm_gate_channels", "bias");
  at::Tensor z;
  bool z_channel_last = false;
  if (z_in) {
    TORCH_CHECK(z_in->device().is_cpu() && z_in->scalar_type() == at::kFloat &&
                    z_in->sizes() == x_in.sizes(),
                "norm_gate_channels (cpu): z must be a float32 CPU tensor of x's shape ",
                x_in.sizes(), ", got ", z_in->scalar_type(), " ", z_in->sizes());
    // Pixels contiguous (channels-first), or channels contiguous (a transposed view of a
    // channel-last (B, J, C) map, transposed here block by block); anything else is copied.
    z_channel_last = !pixels_contiguous(*z_in) && z_in->stride(1) == 1;
    z = pixels_contiguous(*z_in) || z_channel_last ? *z_in : z_in->contiguous();
  }
  at::Tensor out = at::empty({B, C, J}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const int W = kernels->lanes;
  const float *w_p = w.defined() ? w.data_ptr<float>() : nullptr;
  const float *b_p = b.defined() ? b.data_ptr<float>() : nullptr;
  const float *x_p = x.data_ptr<float>(), *z_p = z.defined() ? z.data_ptr<float>() : nullptr;
  float *out_p = out.data_ptr<float>();
  const int64_t xs_b = x.stride(0), xs_c = x.stride(1);
  const int64_t zs_b = z.defined() ? z.stride(0) : 0, zs_c = z.defined() ? z.stride(1) : 0;
  const int64_t zs_j = z.defined() ? z.stride(2) : 0;
  const int64_t blocks = (J + kNormPixels - 1) / kNormPixels;
  const float epsf = static_cast<float>(eps);
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad;  // the last block's pixels when J is not a multiple of the lanes
    std::vector<float> z_rows(z_channel_last ? C * kNormPixels : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / blocks, j0 = (task % blocks) * kNormPixels;
      const int64_t n = std::min(kNormPixels, J - j0), full = n - n % W;
      const float *xb = x_p + bi * xs_b + j0;
      const float *zb = z_p != nullptr ? z_p + bi * zs_b + j0 * zs_j : nullptr;
      int64_t z_rs = zs_c;  // distance between the block's channel rows of z
      if (z_channel_last) {
        kernels->transpose_block(zb, zs_j, n, C, z_rows.data(), n);
        zb = z_rows.data();
        z_rs = n;
      }
      float *ob = out_p + bi * C * J + j0;
      if (full > 0)
        kernels->norm_gate_channels(xb, xs_c, C, full, w_p, b_p, epsf, zb, z_rs, ob, J);
      if (full < n) {
        // Stage the remaining n - full pixels through zero-padded (C, W) tiles.
        const int64_t rest = n - full;
        pad.assign(3 * C * W, 0.0f);
        float *px = pad.data(), *pz = px + C * W, *po = pz + C * W;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t j = 0; j < rest; ++j) {
            px[c * W + j] = xb[c * xs_c + full + j];
            if (zb != nullptr) pz[c * W + j] = zb[c * z_rs + full + j];
          }
        kernels->norm_gate_channels(px, W, C, W, w_p, b_p, epsf, zb != nullptr ? pz : nullptr,
                                    W, po, W);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t j = 0; j < rest; ++j) ob[c * J + full + j] = po[c * W + j];
      }
    }
  });
  return out;
}

// Tokens per task of layer_norm_mean; a task's partial sum is added in task order.
constexpr int64_t kMeanTokens = 256;

at::Tensor layer_norm_mean(const Kernels *kernels, const at::Tensor &x_in,
                           const std::optional<at::Tensor> &weight,
                           const std::optional<at::Tensor> &bias, double eps) {
  TORCH_CHECK(kernels != nullptr && kernels->norm_sum_rows != nullptr,
              "layer_norm_mean (cpu): no kernels");
  TORCH_CHECK(x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat && x_in.dim() == 3,
              "layer_norm_mean (cpu): x must be a float32 (B, T, C) CPU tensor, got ",
              x_in.scalar_type(), " ", x_in.sizes(), " on ", x_in.device());
  const int64_t B = x_in.size(0), T = x_in.size(1), C = x_in.size(2);
  TORCH_CHECK(T > 0, "layer_norm_mean (cpu): no tokens to average");
  // Each token's C values must be one contiguous row, and rows evenly spaced.
  const bool rows_ok = (C <= 1 || x_in.stride(2) == 1) && (T <= 1 || x_in.stride(1) == C);
  const at::Tensor x = rows_ok ? x_in : x_in.contiguous();
  const at::Tensor w = affine(weight, C, "layer_norm_mean", "weight");
  const at::Tensor b = affine(bias, C, "layer_norm_mean", "bias");
  const int64_t blocks = (T + kMeanTokens - 1) / kMeanTokens;
  at::Tensor partial = at::zeros({B, blocks, C}, x.options());
  const float *x_p = x.data_ptr<float>();
  float *part_p = partial.data_ptr<float>();
  const int64_t xs_b = x.stride(0);
  const float epsf = static_cast<float>(eps);
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / blocks, t0 = (task % blocks) * kMeanTokens;
      kernels->norm_sum_rows(x_p + bi * xs_b + t0 * C, std::min(kMeanTokens, T - t0), C, epsf,
                             part_p + task * C);
    }
  });
  at::Tensor out = partial.sum(1).div_(static_cast<double>(T));  // blocks in order
  if (w.defined()) out.mul_(w);
  if (b.defined()) out.add_(b);
  return out;
}

}  // namespace vssm_cpu
