// Python bindings of the CPU selective-scan kernels (`vssm_mm._C_cpu`, which also binds the scan
// orders' gather-sum of gather_sum_cpu.cpp): checks, fp32 staging,
// allocation, the instruction-set choice, at::parallel_for over work units, and the
// reductions over batch, sub-blocks and delta groups (each in a fixed order, so results do not
// depend on the number of threads). The calling convention is in docs/selective_scan.md.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <optional>
#include <string>
#include <vector>

#include "conv_scan_cpu.h"
#include "gather_sum_cpu.h"
#include "norm_gate_cpu.h"
#include "scan_cpu.h"

namespace vssm_cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Outputs of this many bytes or more are written with streaming stores where the kernels have
// them (AVX-512): half a typical last-level cache, which the inputs, at least as large again,
// pass through as well, so the output would not stay cached for the next layer anyway.
constexpr int64_t kStreamingBytes = int64_t(16) << 20;

// Below this many units per thread, parallel_for would not split (grain size of one unit).
constexpr int64_t kMinBackwardUnits = 16;

bool cpu_has(const char *feature) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (std::string(feature) == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::string(feature) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#endif
  return std::string(feature) == "base";
}

// The instruction sets compiled in and supported by this CPU, best first.
std::vector<const Kernels *> usable_kernels() {
  std::vector<const Kernels *> found;
  if (kernels_avx512() != nullptr && cpu_has("avx512")) found.push_back(kernels_avx512());
  if (kernels_avx2() != nullptr && cpu_has("avx2")) found.push_back(kernels_avx2());
  found.push_back(kernels_base());
  return found;
}

const Kernels *&active_kernels() {
  static const Kernels *active = usable_kernels().front();
  return active;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const Kernels *k : usable_kernels()) names.emplace_back(k->name);
  return names;
}

std::string isa() { return active_kernels()->name; }

// The row kernels are used where they exist and N is a multiple of the vector width, unless
// switched off (to compare them with the lane kernels).
bool &row_kernels_enabled() {
  static bool enabled = true;
  return enabled;
}

bool use_rows(const Kernels *k, const ScanShape &s) {
  return row_kernels_enabled() && k->fwd_row != nullptr && s.dstate % k->lanes == 0;
}

// (b, G, N, L) -> (b, G, L, N), the layout of B and C the row kernels read.
Tensor state_innermost(const Tensor &t) { return t.transpose(2, 3).contiguous(); }

void set_isa(const std::string &name) {
  for (const Kernels *k : usable_kernels())
    if (name == k->name || (name.empty() && k == usable_kernels().front())) {
      active_kernels() = k;
      return;
    }
  TORCH_CHECK(false, "selective_scan (cpu): instruction set '", name,
              "' is not available here; available: ", available_isas());
}

Tensor f32(const Tensor &t) { return t.to(at::kFloat).contiguous(); }
OptTensor f32(const OptTensor &t) { return t ? OptTensor(f32(*t)) : std::nullopt; }
const float *ptr(const OptTensor &t) { return t ? t->data_ptr<float>() : nullptr; }

void check_cpu(const Tensor &t, const char *name) {
  TORCH_CHECK(t.device().is_cpu(), "selective_scan (cpu): ", name, " must be a CPU tensor, got ",
              t.device(), "; use backend='cuda' or 'triton' for GPU tensors");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()) && t.scalar_type() != at::kDouble,
              "selective_scan (cpu): ", name, " must be float32, float16 or bfloat16, got ",
              t.scalar_type(), "; float64 runs on backend='reference'");
}

ScanShape check_inputs(const Tensor &u, const Tensor &delta, const Tensor &A, const Tensor &B,
                       const Tensor &C, const OptTensor &D, const OptTensor &z,
                       const OptTensor &delta_bias) {
  for (const auto &item : {std::make_pair(&u, "u"), std::make_pair(&delta, "delta"),
                           std::make_pair(&A, "A"), std::make_pair(&B, "B"),
                           std::make_pair(&C, "C")})
    check_cpu(*item.first, item.second);
  for (const auto &item : {std::make_pair(&D, "D"), std::make_pair(&z, "z"),
                           std::make_pair(&delta_bias, "delta_bias")})
    if (*item.first) check_cpu(**item.first, item.second);
  TORCH_CHECK(u.dim() == 3, "selective_scan (cpu): u must be (batch, dim, L), got ", u.sizes());
  ScanShape s;
  s.batch = u.size(0);
  s.dim = u.size(1);
  s.length = u.size(2);
  TORCH_CHECK(s.batch > 0 && s.dim > 0 && s.length > 0, "selective_scan (cpu): empty input ",
              u.sizes());
  TORCH_CHECK(delta.dim() == 3 && delta.size(0) == s.batch && delta.size(2) == s.length &&
                  delta.size(1) > 0 && s.dim % delta.size(1) == 0,
              "selective_scan (cpu): delta must be (batch, dim / r, L), got ", delta.sizes());
  s.dim_delta = delta.size(1);
  s.ratio = s.dim / s.dim_delta;
  TORCH_CHECK(A.dim() == 2 && A.size(0) == s.dim, "selective_scan (cpu): A must be (dim, N), got ",
              A.sizes());
  s.dstate = A.size(1);
  TORCH_CHECK(s.dstate >= 1 && s.dstate <= kMaxDState, "selective_scan (cpu): N = ", s.dstate,
              " is outside 1..", kMaxDState);
  for (const auto &item : {std::make_pair(&B, "B"), std::make_pair(&C, "C")}) {
    const Tensor &t = *item.first;
    TORCH_CHECK(t.dim() == 4 && t.size(0) == s.batch && t.size(2) == s.dstate &&
                    t.size(3) == s.length && t.size(1) > 0 && s.dim % t.size(1) == 0,
                "selective_scan (cpu): ", item.second, " must be (batch, G, N, L), got ",
                t.sizes());
  }
  TORCH_CHECK(B.size(1) == C.size(1), "selective_scan (cpu): B and C need the same groups");
  s.groups = B.size(1);
  s.per_group = s.dim / s.groups;
  TORCH_CHECK(!D || D->numel() == s.dim, "selective_scan (cpu): D must be (dim,)");
  TORCH_CHECK(!z || z->sizes() == u.sizes(), "selective_scan (cpu): z must have u's shape");
  TORCH_CHECK(!delta_bias || delta_bias->numel() == s.dim_delta,
              "selective_scan (cpu): delta_bias must be (dim / r,)");
  s.n_chunks = (s.length + kChunk - 1) / kChunk;
  return s;
}

int64_t num_vectors(const ScanShape &s, const Kernels *k) {
  return (s.per_group + k->lanes - 1) / k->lanes;
}

// The inputs in fp32, contiguous (no copy for fp32 contiguous tensors).
struct Inputs {
  Tensor u, delta, A, B, C;
  OptTensor D, z, bias;
  Inputs(const Tensor &u_, const Tensor &delta_, const Tensor &A_, const Tensor &B_,
         const Tensor &C_, const OptTensor &D_, const OptTensor &z_, const OptTensor &bias_)
      : u(f32(u_)), delta(f32(delta_)), A(f32(A_)), B(f32(B_)), C(f32(C_)), D(f32(D_)),
        z(f32(z_)), bias(f32(bias_)) {}

  template <typename Args>
  void fill(Args &a) const {
    a.u = u.data_ptr<float>();
    a.delta = delta.data_ptr<float>();
    a.A = A.data_ptr<float>();
    a.B = B.data_ptr<float>();
    a.C = C.data_ptr<float>();
    a.D = ptr(D);
    a.z = ptr(z);
    a.bias = ptr(bias);
  }
};

template <typename Args, typename Fn>
void run_units(int64_t n_units, int64_t scratch_floats, const Args &args, Fn unit_fn) {
  at::parallel_for(0, n_units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(scratch_floats);
    for (int64_t unit = begin; unit < end; ++unit) unit_fn(args, unit, scratch.data());
  });
}

// Allocates out (batch, dim, L) and states (batch, dim, n_chunks, N) in float32 and runs the
// forward kernels (the row kernels where they apply) with a's shape and inputs.
void run_forward(const Inputs &in, FwdArgs &a, const at::TensorOptions &like, Tensor &out,
                 Tensor &states) {
  const ScanShape &s = a.s;
  const Kernels *k = active_kernels();
  const auto options = like.dtype(at::kFloat);
  out = at::empty({s.batch, s.dim, s.length}, options);
  states = at::empty({s.batch, s.dim, s.n_chunks, s.dstate}, options);
  a.out = out.data_ptr<float>();
  a.states = states.data_ptr<float>();
  a.stream_out = out.numel() * sizeof(float) >= kStreamingBytes;
  if (use_rows(k, s)) {
    const Tensor Bt = state_innermost(in.B), Ct = state_innermost(in.C);
    a.Bt = Bt.data_ptr<float>();
    a.Ct = Ct.data_ptr<float>();
    run_units(s.batch * s.dim, k->fwd_row_scratch(s), a, k->fwd_row);
  } else {
    a.Bt = a.Ct = nullptr;
    run_units(s.batch * s.groups * num_vectors(s, k), k->fwd_scratch(s), a, k->fwd_unit);
  }
}

std::vector<Tensor> selective_scan_fwd(const Tensor &u, const Tensor &delta, const Tensor &A,
                                       const Tensor &B, const Tensor &C, const OptTensor &D,
                                       const OptTensor &z, const OptTensor &delta_bias,
                                       bool delta_softplus, bool out_float32) {
  const ScanShape s = check_inputs(u, delta, A, B, C, D, z, delta_bias);
  const Inputs in(u, delta, A, B, C, D, z, delta_bias);
  FwdArgs a;
  a.s = s;
  a.softplus = delta_softplus;
  in.fill(a);
  Tensor out, states;
  run_forward(in, a, u.options(), out, states);
  if (!out_float32 && u.scalar_type() != at::kFloat) out = out.to(u.scalar_type());
  return {out, states};
}

// The forward with delta in low rank, for inference (no states returned, no backward):
// delta[b, k * d + i, t] = sum_r delta_proj[k, i, r] * delta_low[b, k, r, t], so that the
// (batch, dim, L) delta is never written. delta_low (B, K, R, L) may be a strided view (a slice
// of the projection's output) with contiguous tokens; every tensor float32.
Tensor selective_scan_fwd_lowrank(const Tensor &u, const Tensor &delta_low,
                                  const Tensor &delta_proj, const Tensor &A, const Tensor &B,
                                  const Tensor &C, const OptTensor &D, const OptTensor &z,
                                  const OptTensor &delta_bias, bool delta_softplus) {
  for (const Tensor *t : {&u, &delta_low, &delta_proj, &A, &B, &C})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat,
                "selective_scan_fwd_lowrank (cpu): every tensor must be float32 on the CPU, got ",
                t->scalar_type(), " on ", t->device());
  for (const OptTensor *t : {&D, &z, &delta_bias})
    TORCH_CHECK(!*t || ((*t)->device().is_cpu() && (*t)->scalar_type() == at::kFloat),
                "selective_scan_fwd_lowrank (cpu): every tensor must be float32 on the CPU");
  // u stands in for delta in the shape checks: the full delta has u's shape.
  const ScanShape s = check_inputs(u, u, A, B, C, D, z, delta_bias);
  TORCH_CHECK(delta_low.dim() == 4 && delta_low.size(0) == s.batch &&
                  delta_low.size(3) == s.length && delta_low.size(1) > 0 &&
                  s.dim % delta_low.size(1) == 0 && (s.length <= 1 || delta_low.stride(3) == 1),
              "selective_scan_fwd_lowrank (cpu): delta_low must be (batch, K, R, L) with K "
              "dividing dim and contiguous tokens, got ", delta_low.sizes(), " strides ",
              delta_low.strides());
  const int64_t K = delta_low.size(1), R = delta_low.size(2), d = s.dim / K;
  TORCH_CHECK(delta_proj.dim() == 3 && delta_proj.size(0) == K && delta_proj.size(1) == d &&
                  delta_proj.size(2) == R,
              "selective_scan_fwd_lowrank (cpu): delta_proj must be (", K, ", ", d, ", ", R,
              "), got ", delta_proj.sizes());
  const Inputs in(u, u, A, B, C, D, z, delta_bias);
  const Tensor proj = delta_proj.contiguous();
  FwdArgs a;
  a.s = s;
  a.softplus = delta_softplus;
  in.fill(a);
  a.delta = nullptr;
  a.dlow = delta_low.data_ptr<float>();
  a.dproj = proj.data_ptr<float>();
  a.rank = R;
  a.dlow_block = d;
  a.dlow_sb = delta_low.stride(0);
  a.dlow_sk = delta_low.stride(1);
  a.dlow_sr = delta_low.stride(2);
  Tensor out, states;
  run_forward(in, a, u.options(), out, states);
  return out;
}

// sum over the leading dimension of a contiguous (parts, rest) fp32 tensor, in order.
Tensor sum_parts(const Tensor &parts) {
  if (parts.size(0) == 1) return parts[0];
  Tensor total = at::empty(parts.sizes().slice(1), parts.options());
  const int64_t n = total.numel(), count = parts.size(0);
  const float *src = parts.data_ptr<float>();
  float *dst = total.data_ptr<float>();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float acc = 0.0f;
      for (int64_t p = 0; p < count; ++p) acc += src[p * n + i];
      dst[i] = acc;
    }
  });
  return total;
}

// (outer, r, inner) -> (outer, inner) summed over r in order.
Tensor sum_middle(const Tensor &x, int64_t outer, int64_t r, int64_t inner) {
  if (r == 1) return x.view({outer, inner});
  Tensor total = at::empty({outer, inner}, x.options());
  const float *src = x.data_ptr<float>();
  float *dst = total.data_ptr<float>();
  at::parallel_for(0, outer * inner, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o = i / inner, j = i % inner;
      float acc = 0.0f;
      for (int64_t p = 0; p < r; ++p) acc += src[(o * r + p) * inner + j];
      dst[i] = acc;
    }
  });
  return total;
}

Tensor like(const Tensor &grad, const Tensor &input) {
  return grad.scalar_type() == input.scalar_type() ? grad : grad.to(input.scalar_type());
}

std::vector<OptTensor> selective_scan_bwd(const Tensor &u, const Tensor &delta, const Tensor &A,
                                          const Tensor &B, const Tensor &C, const OptTensor &D,
                                          const OptTensor &z, const OptTensor &delta_bias,
                                          const Tensor &dout, const OptTensor &dlast_state,
                                          const Tensor &states, bool delta_softplus) {
  const ScanShape s = check_inputs(u, delta, A, B, C, D, z, delta_bias);
  TORCH_CHECK(dout.sizes() == u.sizes(), "selective_scan (cpu): dout must have u's shape");
  TORCH_CHECK(states.dim() == 4 && states.size(0) == s.batch && states.size(1) == s.dim &&
                  states.size(2) == s.n_chunks && states.size(3) == s.dstate &&
                  states.scalar_type() == at::kFloat,
              "selective_scan (cpu): states must be the forward's (batch, dim, n_chunks, N) "
              "float32 tensor, got ",
              states.sizes());
  TORCH_CHECK(!dlast_state || dlast_state->numel() == s.batch * s.dim * s.dstate,
              "selective_scan (cpu): dlast_state must be (batch, dim, N)");
  const Kernels *k = active_kernels();
  const Inputs in(u, delta, A, B, C, D, z, delta_bias);
  const Tensor dout32 = f32(dout), states32 = states.contiguous();
  const OptTensor dlast32 = f32(dlast_state);
  // Backward units: (batch, group, sub-block of vectors, or of channels for the row kernels);
  // enough of them for the threads, but a number that depends on the shape only, so that sums
  // do not depend on the thread count.
  const bool rows = use_rows(k, s);
  const int64_t nvec = rows ? s.per_group : num_vectors(s, k);
  int64_t n_sub = std::min(nvec, (kMinBackwardUnits + s.batch * s.groups - 1) /
                                     (s.batch * s.groups));
  const int64_t per_unit = (nvec + n_sub - 1) / n_sub;
  n_sub = (nvec + per_unit - 1) / per_unit;

  const auto options = u.options().dtype(at::kFloat);
  Tensor du = at::empty({s.batch, s.dim, s.length}, options);
  Tensor ddelta_ch = at::empty({s.batch, s.dim, s.length}, options);
  Tensor dz = z ? at::empty({s.batch, s.dim, s.length}, options) : Tensor();
  Tensor dA_part = at::empty({s.batch, s.dim, s.dstate}, options);
  Tensor dD_part = at::empty({s.batch, s.dim}, options);
  Tensor dbias_part = at::empty({s.batch, s.dim}, options);
  Tensor dB_part = at::empty({n_sub, s.batch, s.groups, s.dstate, s.length}, options);
  Tensor dC_part = at::empty({n_sub, s.batch, s.groups, s.dstate, s.length}, options);

  BwdArgs a;
  a.s = s;
  a.softplus = delta_softplus;
  in.fill(a);
  a.dout = dout32.data_ptr<float>();
  a.dlast = ptr(dlast32);
  a.states = states32.data_ptr<float>();
  a.du = du.data_ptr<float>();
  a.ddelta_ch = ddelta_ch.data_ptr<float>();
  a.dz = z ? dz.data_ptr<float>() : nullptr;
  a.dA_part = dA_part.data_ptr<float>();
  a.dD_part = dD_part.data_ptr<float>();
  a.dbias_part = dbias_part.data_ptr<float>();
  a.dB_part = dB_part.data_ptr<float>();
  a.dC_part = dC_part.data_ptr<float>();
  a.vectors_per_unit = per_unit;
  a.n_sub = n_sub;
  a.stream_out = du.numel() * sizeof(float) >= kStreamingBytes;
  Tensor dB, dC;
  if (rows) {
    const Tensor Bt = state_innermost(in.B), Ct = state_innermost(in.C);
    a.Bt = Bt.data_ptr<float>();
    a.Ct = Ct.data_ptr<float>();
    run_units(s.batch * s.groups * n_sub, k->bwd_row_scratch(s, per_unit), a, k->bwd_row);
    // (n_sub, b, G, L, N) parts: the sum, back to (b, G, N, L).
    dB = state_innermost(sum_parts(dB_part.view({n_sub, s.batch, s.groups, s.length, s.dstate})));
    dC = state_innermost(sum_parts(dC_part.view({n_sub, s.batch, s.groups, s.length, s.dstate})));
  } else {
    a.Bt = a.Ct = nullptr;
    run_units(s.batch * s.groups * n_sub, k->bwd_scratch(s, per_unit), a, k->bwd_unit);
    dB = sum_parts(dB_part);
    dC = sum_parts(dC_part);
  }

  const Tensor dA = sum_parts(dA_part).view(A.sizes());
  const Tensor ddelta = sum_middle(ddelta_ch, s.batch * s.dim_delta, s.ratio, s.length);
  std::vector<OptTensor> grads{like(du, u), like(ddelta.view(delta.sizes()), delta), like(dA, A),
                               like(dB.view(B.sizes()), B), like(dC.view(C.sizes()), C),
                               std::nullopt, std::nullopt, std::nullopt};
  if (D) grads[5] = like(sum_parts(dD_part).view(D->sizes()), *D);
  if (z) grads[6] = like(dz, *z);
  if (delta_bias) {
    const Tensor per_channel = sum_parts(dbias_part);  // (dim,)
    grads[7] = like(sum_middle(per_channel, s.dim_delta, s.ratio, 1).view(delta_bias->sizes()),
                    *delta_bias);
  }
  return grads;
}

}  // namespace
}  // namespace vssm_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Selective scan (Mamba-1 S6) for CPU tensors; see docs/selective_scan.md";
  m.def("selective_scan_fwd", &vssm_cpu::selective_scan_fwd,
        "(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32) -> [out, states]");
  m.def("selective_scan_bwd", &vssm_cpu::selective_scan_bwd,
        "(u, delta, A, B, C, D, z, delta_bias, dout, dlast_state, states, delta_softplus) -> "
        "[du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]");
  m.def("selective_scan_fwd_lowrank", &vssm_cpu::selective_scan_fwd_lowrank,
        "(u, delta_low (B, K, R, L), delta_proj (K, d, R), A, B, C, D, z, delta_bias, "
        "delta_softplus) -> out: the forward with delta = delta_proj @ delta_low per direction, "
        "float32, for inference");
  m.def("chunk_length", []() { return vssm_cpu::kChunk; },
        "tokens per saved state (states has ceil(L / chunk_length()) chunks)");
  m.def("isa", &vssm_cpu::isa, "the instruction set the kernels run with");
  m.def("available_isas", &vssm_cpu::available_isas,
        "instruction sets compiled in and supported by this CPU, best first");
  m.def("set_isa", &vssm_cpu::set_isa, "use the named instruction set ('' = the best)");
  m.def("row_kernels", []() { return vssm_cpu::row_kernels_enabled(); },
        "whether the row kernels run where they apply (N a multiple of the vector width)");
  m.def("gather_sum", &vssm_cpu::gather_sum,
        "(src (B, S, C, P), table (R, M, J) int64) -> out (B, R, C, J): the scan orders' "
        "gather-sum (vssm_mm/ops/scan_orders/gather.py)");
  m.def("norm_gate_channels",
        [](const at::Tensor &x, const std::optional<at::Tensor> &weight,
           const std::optional<at::Tensor> &bias, double eps,
           const std::optional<at::Tensor> &z) {
          return vssm_cpu::norm_gate_channels(vssm_cpu::active_kernels(), x, weight, bias, eps, z);
        },
        "(x (B, C, J), weight, bias, eps, z (B, C, J)) -> out (B, C, J): layer_norm over C of "
        "a channels-first map, times silu(z); float32 (norm_gate_cpu.h)");
  m.def("layer_norm_mean",
        [](const at::Tensor &x, const std::optional<at::Tensor> &weight,
           const std::optional<at::Tensor> &bias, double eps) {
          return vssm_cpu::layer_norm_mean(vssm_cpu::active_kernels(), x, weight, bias, eps);
        },
        "(x (B, T, C), weight, bias, eps) -> (B, C): the mean over tokens of layer_norm(x); "
        "float32 (norm_gate_cpu.h)");
  m.def("dwconv_silu_scan",
        [](const at::Tensor &x, const at::Tensor &weight, const std::optional<at::Tensor> &bias,
           const at::Tensor &index) {
          return vssm_cpu::dwconv_silu_scan(vssm_cpu::active_kernels(), x, weight, bias, index);
        },
        "(x (B, H, W, C) channel-last, depthwise weight (C, 1, k, k), bias, index (R, J)) -> "
        "out (B, R, C, J): silu(conv(x)) gathered into scan orders; float32 (conv_scan_cpu.h)");
  m.def("set_row_kernels", [](bool enabled) { vssm_cpu::row_kernels_enabled() = enabled; },
        "switch the row kernels on (the default) or off (lane kernels for every N)");
}
