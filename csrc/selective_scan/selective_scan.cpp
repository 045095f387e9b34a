// Python bindings of the selective-scan CUDA kernels: argument checks, allocation, dispatch.
// The calling convention is documented in docs/selective_scan.md ("The cuda backend").
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "selective_scan.h"

namespace vssm_mm {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

ScanDtype scan_dtype(const Tensor &t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return ScanDtype::kFloat32;
    case at::kHalf:
      return ScanDtype::kFloat16;
    case at::kBFloat16:
      return ScanDtype::kBFloat16;
    default:
      TORCH_CHECK(false, "selective_scan (cuda): u must be float32, float16 or bfloat16, got ",
                  t.scalar_type(), "; use backend='reference' for other dtypes");
  }
}

void check_cuda(const Tensor &t, const Tensor &u, const char *name) {
  TORCH_CHECK(t.is_cuda(), "selective_scan (cuda): ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == u.device(), "selective_scan (cuda): ", name,
              " is on ", t.device(), " but u is on ", u.device());
}

void check_same_dtype(const Tensor &t, const Tensor &u, const char *name) {
  TORCH_CHECK(t.scalar_type() == u.scalar_type(), "selective_scan (cuda): ", name,
              " must have u's dtype ", u.scalar_type(), ", got ", t.scalar_type());
}

void check_fp32(const Tensor &t, const Tensor &u, const char *name) {
  check_cuda(t, u, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "selective_scan (cuda): ", name,
              " must be float32, got ", t.scalar_type());
}

// Checks every input and returns the shape record.
ScanShape check_inputs(const Tensor &u, const Tensor &delta, const Tensor &A, const Tensor &B,
                       const Tensor &C, const OptTensor &D, const OptTensor &z,
                       const OptTensor &delta_bias) {
  scan_dtype(u);
  check_cuda(u, u, "u");
  TORCH_CHECK(u.dim() == 3, "selective_scan (cuda): u must be (batch, dim, L), got ", u.sizes());
  ScanShape s;
  s.batch = u.size(0);
  s.dim = u.size(1);
  s.length = u.size(2);
  TORCH_CHECK(s.batch > 0 && s.dim > 0 && s.length > 0,
              "selective_scan (cuda): empty input ", u.sizes());
  TORCH_CHECK(s.batch <= 65535, "selective_scan (cuda): batch ", s.batch,
              " exceeds 65535 (the grid's y limit); split the batch");
  TORCH_CHECK(s.dim <= 2147483647LL, "selective_scan (cuda): too many channels");
  check_cuda(delta, u, "delta");
  check_same_dtype(delta, u, "delta");
  TORCH_CHECK(delta.dim() == 3 && delta.size(0) == s.batch && delta.size(2) == s.length &&
                  delta.size(1) > 0 && s.dim % delta.size(1) == 0,
              "selective_scan (cuda): delta must be (batch, dim / r, L), got ", delta.sizes());
  s.dim_delta = delta.size(1);
  s.ratio = s.dim / s.dim_delta;
  check_fp32(A, u, "A");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == s.dim, "selective_scan (cuda): A must be (dim, N)");
  s.dstate = A.size(1);
  TORCH_CHECK(s.dstate >= 1 && s.dstate <= kMaxDState, "selective_scan (cuda): N = ", s.dstate,
              " is outside 1..", kMaxDState);
  for (const auto &item : {std::make_pair(&B, "B"), std::make_pair(&C, "C")}) {
    const Tensor &t = *item.first;
    check_cuda(t, u, item.second);
    check_same_dtype(t, u, item.second);
    TORCH_CHECK(t.dim() == 4 && t.size(0) == s.batch && t.size(2) == s.dstate &&
                    t.size(3) == s.length && t.size(1) > 0 && s.dim % t.size(1) == 0,
                "selective_scan (cuda): ", item.second, " must be (batch, G, N, L), got ",
                t.sizes());
  }
  TORCH_CHECK(B.size(1) == C.size(1), "selective_scan (cuda): B and C need the same groups");
  s.groups = B.size(1);
  s.dim_per_group = s.dim / s.groups;
  if (D) {
    check_fp32(*D, u, "D");
    TORCH_CHECK(D->numel() == s.dim, "selective_scan (cuda): D must be (dim,)");
  }
  if (z) {
    check_cuda(*z, u, "z");
    check_same_dtype(*z, u, "z");
    TORCH_CHECK(z->sizes() == u.sizes(), "selective_scan (cuda): z must have u's shape");
  }
  if (delta_bias) {
    check_fp32(*delta_bias, u, "delta_bias");
    TORCH_CHECK(delta_bias->numel() == s.dim_delta,
                "selective_scan (cuda): delta_bias must be (dim / r,)");
  }
  s.n_chunks = scan_num_chunks(s.length);
  return s;
}

// The inputs made contiguous (alive for the launch) and the pointers both passes read.
struct ContiguousInputs {
  Tensor u, delta, A, B, C;
  OptTensor z, D, delta_bias;

  ContiguousInputs(const Tensor &u_in, const Tensor &delta_in, const Tensor &A_in,
                   const Tensor &B_in, const Tensor &C_in, const OptTensor &D_in,
                   const OptTensor &z_in, const OptTensor &bias_in)
      : u(u_in.contiguous()), delta(delta_in.contiguous()), A(A_in.contiguous()),
        B(B_in.contiguous()), C(C_in.contiguous()) {
    if (z_in) z = z_in->contiguous();
    if (D_in) D = D_in->contiguous();
    if (bias_in) delta_bias = bias_in->contiguous();
  }

  void fill(ScanInputs &p, const ScanShape &shape, bool delta_softplus) const {
    p.shape = shape;
    p.delta_softplus = delta_softplus;
    p.u = u.data_ptr();
    p.delta = delta.data_ptr();
    p.B = B.data_ptr();
    p.C = C.data_ptr();
    p.z = z ? z->data_ptr() : nullptr;
    p.A = A.data_ptr<float>();
    p.D = D ? D->data_ptr<float>() : nullptr;
    p.delta_bias = delta_bias ? delta_bias->data_ptr<float>() : nullptr;
  }
};

std::vector<Tensor> selective_scan_fwd(const Tensor &u_in, const Tensor &delta_in,
                                       const Tensor &A_in, const Tensor &B_in,
                                       const Tensor &C_in, const OptTensor &D,
                                       const OptTensor &z_in, const OptTensor &delta_bias,
                                       bool delta_softplus, bool out_float32) {
  const ScanShape s = check_inputs(u_in, delta_in, A_in, B_in, C_in, D, z_in, delta_bias);
  c10::cuda::CUDAGuard guard(u_in.device());
  const ContiguousInputs in(u_in, delta_in, A_in, B_in, C_in, D, z_in, delta_bias);
  const Tensor &u = in.u;
  const auto out_dtype = out_float32 ? at::kFloat : u.scalar_type();
  Tensor out = at::empty(u.sizes(), u.options().dtype(out_dtype));
  Tensor x = at::empty({s.batch, s.dim, s.n_chunks, s.dstate}, u.options().dtype(at::kFloat));

  ScanFwdParams p;
  in.fill(p, s, delta_softplus);
  p.out = out.data_ptr();
  p.x = x.data_ptr<float>();
  launch_selective_scan_fwd(p, scan_dtype(u), out_float32 && u.scalar_type() != at::kFloat,
                            c10::cuda::getCurrentCUDAStream().stream());
  return {out, x};
}

std::vector<Tensor> selective_scan_bwd(const Tensor &u_in, const Tensor &delta_in,
                                       const Tensor &A_in, const Tensor &B_in,
                                       const Tensor &C_in, const OptTensor &D,
                                       const OptTensor &z_in, const OptTensor &delta_bias,
                                       const Tensor &dout_in, const Tensor &x_in,
                                       bool delta_softplus) {
  const ScanShape s = check_inputs(u_in, delta_in, A_in, B_in, C_in, D, z_in, delta_bias);
  c10::cuda::CUDAGuard guard(u_in.device());
  check_cuda(dout_in, u_in, "dout");
  TORCH_CHECK(dout_in.sizes() == u_in.sizes(), "selective_scan (cuda): dout must have u's shape");
  TORCH_CHECK(dout_in.scalar_type() == at::kFloat || dout_in.scalar_type() == u_in.scalar_type(),
              "selective_scan (cuda): dout must be float32 or u's dtype, got ",
              dout_in.scalar_type());
  check_fp32(x_in, u_in, "x");
  TORCH_CHECK(x_in.dim() == 4 && x_in.size(0) == s.batch && x_in.size(1) == s.dim &&
                  x_in.size(2) == s.n_chunks && x_in.size(3) == s.dstate,
              "selective_scan (cuda): x must be (batch, dim, ", s.n_chunks, ", N) as returned by "
              "selective_scan_fwd, got ", x_in.sizes());
  const ContiguousInputs in(u_in, delta_in, A_in, B_in, C_in, D, z_in, delta_bias);
  const Tensor &u = in.u, &delta = in.delta, &A = in.A, &B = in.B, &C = in.C;
  const OptTensor &z = in.z;
  const Tensor dout = dout_in.contiguous(), x = x_in.contiguous();
  const auto f32 = u.options().dtype(at::kFloat);

  Tensor du = at::empty_like(u);
  Tensor ddelta = s.ratio == 1 ? at::empty_like(delta) : at::zeros(delta.sizes(), f32);
  Tensor dA = at::zeros(A.sizes(), f32);
  Tensor dB = at::zeros(B.sizes(), f32), dC = at::zeros(C.sizes(), f32);
  Tensor dD = D ? at::zeros({s.dim}, f32) : Tensor();
  Tensor dz = z ? at::empty_like(*z) : Tensor();
  Tensor dbias = delta_bias ? at::zeros({s.dim_delta}, f32) : Tensor();

  ScanBwdParams p;
  in.fill(p, s, delta_softplus);
  p.dout = dout.data_ptr();
  p.x = x.data_ptr<float>();
  p.du = du.data_ptr();
  p.dz = z ? dz.data_ptr() : nullptr;
  p.ddelta = ddelta.data_ptr();
  p.dA = dA.data_ptr<float>();
  p.dB = dB.data_ptr<float>();
  p.dC = dC.data_ptr<float>();
  p.dD = D ? dD.data_ptr<float>() : nullptr;
  p.ddelta_bias = delta_bias ? dbias.data_ptr<float>() : nullptr;
  launch_selective_scan_bwd(p, scan_dtype(u),
                            dout.scalar_type() == at::kFloat && u.scalar_type() != at::kFloat,
                            c10::cuda::getCurrentCUDAStream().stream());

  const auto in_dtype = u.scalar_type();
  if (s.ratio != 1) ddelta = ddelta.to(in_dtype);
  dB = dB.to(B_in.scalar_type());
  dC = dC.to(C_in.scalar_type());
  if (dD.defined()) dD = dD.to(D->scalar_type());
  if (dbias.defined()) dbias = dbias.to(delta_bias->scalar_type());
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

}  // namespace
}  // namespace vssm_mm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vssm_mm selective-scan CUDA kernels";
  m.def("selective_scan_fwd", &vssm_mm::selective_scan_fwd,
        "selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32)"
        " -> [out, x]",
        pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"),
        pybind11::arg("C"), pybind11::arg("D"), pybind11::arg("z"), pybind11::arg("delta_bias"),
        pybind11::arg("delta_softplus"), pybind11::arg("out_float32"));
  m.def("selective_scan_bwd", &vssm_mm::selective_scan_bwd,
        "selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, delta_softplus)"
        " -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]",
        pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"),
        pybind11::arg("C"), pybind11::arg("D"), pybind11::arg("z"), pybind11::arg("delta_bias"),
        pybind11::arg("dout"), pybind11::arg("x"), pybind11::arg("delta_softplus"));
  m.def("chunk_length", &vssm_mm::scan_chunk_length,
        "tokens per saved state chunk for a sequence of the given length");
}
