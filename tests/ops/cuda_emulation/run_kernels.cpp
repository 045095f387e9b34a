// Runs the selective-scan CUDA kernels (csrc/selective_scan/*_kernel.cuh) under the host
// emulation of cuda_emulation.h. Driven by tests/ops/test_cuda_kernel_emulation.py:
//
//   run_kernels DIR DTYPE OUT_FLOAT32 BATCH DIM DIM_DELTA LENGTH DSTATE GROUPS HAS_D HAS_Z
//               HAS_BIAS SOFTPLUS
//
// DIR holds the inputs as raw float32 files (u, delta, A, B, C and optionally D, z, bias, dout);
// DTYPE (f32, f16, bf16) is the kernels' input dtype. Writes out, x and, when dout is given, the
// gradients du, ddelta, dA, dB, dC, dD, dz, dbias as raw float32 files into DIR.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "selective_scan_bwd_kernel.cuh"
#include "selective_scan_fwd_kernel.cuh"

namespace {

using vssm_mm::ScanBwdParams;
using vssm_mm::ScanFwdParams;
using vssm_mm::ScanShape;

std::vector<float> read(const std::string &path, size_t count, bool required = true) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    if (required) throw std::runtime_error("missing " + path);
    return {};
  }
  std::vector<float> data(count);
  file.read(reinterpret_cast<char *>(data.data()), count * sizeof(float));
  if (static_cast<size_t>(file.gcount()) != count * sizeof(float))
    throw std::runtime_error("short file " + path);
  return data;
}

void write(const std::string &path, const std::vector<float> &data) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char *>(data.data()), data.size() * sizeof(float));
}

template <typename T>
std::vector<T> convert(const std::vector<float> &values) {
  std::vector<T> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = vssm_mm::from_float<T>(values[i]);
  return out;
}

template <typename T>
std::vector<float> to_floats(const std::vector<T> &values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = vssm_mm::to_float(values[i]);
  return out;
}

template <typename in_t, typename out_t>
void run(const std::string &dir, const ScanShape &s, bool has_D, bool has_z, bool has_bias,
         bool softplus) {
  const size_t row = s.batch * s.dim * s.length;
  const size_t delta_size = s.batch * s.dim_delta * s.length;
  const size_t bc = s.batch * s.groups * s.dstate * s.length;
  const auto u = convert<in_t>(read(dir + "/u", row));
  const auto delta = convert<in_t>(read(dir + "/delta", delta_size));
  const auto A = read(dir + "/A", s.dim * s.dstate);
  const auto B = convert<in_t>(read(dir + "/B", bc));
  const auto C = convert<in_t>(read(dir + "/C", bc));
  const auto D = has_D ? read(dir + "/D", s.dim) : std::vector<float>();
  const auto z = has_z ? convert<in_t>(read(dir + "/z", row)) : std::vector<in_t>();
  const auto bias = has_bias ? read(dir + "/bias", s.dim_delta) : std::vector<float>();

  std::vector<out_t> out(row);
  std::vector<float> x(s.batch * s.dim * s.n_chunks * s.dstate);
  vssm_mm::ScanInputs inputs;
  inputs.shape = s;
  inputs.delta_softplus = softplus;
  inputs.u = u.data();
  inputs.delta = delta.data();
  inputs.B = B.data();
  inputs.C = C.data();
  inputs.z = has_z ? z.data() : nullptr;
  inputs.A = A.data();
  inputs.D = has_D ? D.data() : nullptr;
  inputs.delta_bias = has_bias ? bias.data() : nullptr;

  ScanFwdParams f;
  static_cast<vssm_mm::ScanInputs &>(f) = inputs;
  f.out = out.data();
  f.x = x.data();
  vssm_mm::for_launch_shape<false>(s.length, [&]<int kThreads, int kItems>() {
    vssm_emu::launch(vssm_mm::selective_scan_fwd_kernel<kThreads, kItems, in_t, out_t>,
                     s.dim, s.batch, kThreads, s.dstate * sizeof(float), f);
  });
  write(dir + "/out.result", to_floats(out));
  write(dir + "/x.result", x);

  const auto dout_values = read(dir + "/dout", row, false);
  if (dout_values.empty()) return;
  const auto dout = convert<out_t>(dout_values);
  std::vector<in_t> du(row), dz(has_z ? row : 0), ddelta_in(s.ratio == 1 ? delta_size : 0);
  std::vector<float> ddelta_acc(s.ratio == 1 ? 0 : delta_size, 0.0f);
  std::vector<float> dA(s.dim * s.dstate, 0.0f), dB(bc, 0.0f), dC(bc, 0.0f);
  std::vector<float> dD(s.dim, 0.0f), dbias(s.dim_delta, 0.0f);
  ScanBwdParams g;
  static_cast<vssm_mm::ScanInputs &>(g) = inputs;
  g.dout = dout.data();
  g.x = x.data();
  g.du = du.data();
  g.dz = has_z ? dz.data() : nullptr;
  g.ddelta = s.ratio == 1 ? static_cast<void *>(ddelta_in.data()) : ddelta_acc.data();
  g.dA = dA.data();
  g.dB = dB.data();
  g.dC = dC.data();
  g.dD = has_D ? dD.data() : nullptr;
  g.ddelta_bias = has_bias ? dbias.data() : nullptr;
  vssm_mm::for_launch_shape<true>(s.length, [&]<int kThreads, int kItems>() {
    vssm_emu::launch(vssm_mm::selective_scan_bwd_kernel<kThreads, kItems, in_t, out_t>,
                     s.dim, s.batch, kThreads, 2 * s.dstate * sizeof(float), g);
  });
  write(dir + "/du.result", to_floats(du));
  write(dir + "/ddelta.result", s.ratio == 1 ? to_floats(ddelta_in) : ddelta_acc);
  write(dir + "/dA.result", dA);
  write(dir + "/dB.result", dB);
  write(dir + "/dC.result", dC);
  if (has_D) write(dir + "/dD.result", dD);
  if (has_z) write(dir + "/dz.result", to_floats(dz));
  if (has_bias) write(dir + "/dbias.result", dbias);
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 14) {
    std::fprintf(stderr, "usage: %s DIR DTYPE OUT_FLOAT32 BATCH DIM DIM_DELTA LENGTH DSTATE "
                 "GROUPS HAS_D HAS_Z HAS_BIAS SOFTPLUS\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1], dtype = argv[2];
  const bool out_float32 = std::atoi(argv[3]) != 0;
  ScanShape s;
  s.batch = std::atoll(argv[4]);
  s.dim = std::atoll(argv[5]);
  s.dim_delta = std::atoll(argv[6]);
  s.length = std::atoll(argv[7]);
  s.dstate = std::atoll(argv[8]);
  s.groups = std::atoll(argv[9]);
  s.ratio = s.dim / s.dim_delta;
  s.dim_per_group = s.dim / s.groups;
  s.n_chunks = vssm_mm::scan_num_chunks(s.length);
  const bool has_D = std::atoi(argv[10]), has_z = std::atoi(argv[11]);
  const bool has_bias = std::atoi(argv[12]), softplus = std::atoi(argv[13]);
  try {
    if (dtype == "f32") {
      run<float, float>(dir, s, has_D, has_z, has_bias, softplus);
    } else if (dtype == "f16") {
      if (out_float32)
        run<__half, float>(dir, s, has_D, has_z, has_bias, softplus);
      else
        run<__half, __half>(dir, s, has_D, has_z, has_bias, softplus);
    } else if (dtype == "bf16") {
      if (out_float32)
        run<__nv_bfloat16, float>(dir, s, has_D, has_z, has_bias, softplus);
      else
        run<__nv_bfloat16, __nv_bfloat16>(dir, s, has_D, has_z, has_bias, softplus);
    } else {
      std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
      return 2;
    }
  } catch (const std::exception &err) {
    std::fprintf(stderr, "%s\n", err.what());
    return 1;
  }
  return 0;
}
