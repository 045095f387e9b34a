// Host/device interface of the selective-scan kernels (plain C++, no torch headers, so that the
// .cu files compile without ATen).
//
// Semantics: docs/selective_scan.md. Layouts (all contiguous, element offsets in int64):
//   u, z, out, du, dz       (batch, dim, L)
//   delta, ddelta           (batch, dim_delta, L); channel d uses delta row d / ratio
//   B, C, dB, dC            (batch, groups, dstate, L); channel d uses group d / dim_per_group
//   A, dA                   (dim, dstate) fp32;  D, dD (dim) fp32;  delta_bias, ddelta_bias (dim_delta)
//   x                       (batch, dim, n_chunks, dstate) fp32: the state after every chunk
#pragma once

#include <cstdint>

namespace vssm_mm {

enum class ScanDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Largest dstate the kernels accept (shared memory holds one float or two per state).
constexpr int kMaxDState = 256;

// Tokens per chunk for a sequence of `length` tokens. The forward stores one state per chunk and
// the backward recomputes the states inside a chunk from it, so both passes must agree.
inline int64_t scan_chunk_length(int64_t length) {
  if (length <= 128) return 128;
  if (length <= 512) return 512;
  return 2048;
}

inline int64_t scan_num_chunks(int64_t length) {
  const int64_t chunk = scan_chunk_length(length);
  return (length + chunk - 1) / chunk;
}

struct ScanShape {
  int64_t batch = 0, dim = 0, dim_delta = 0, length = 0, dstate = 0, groups = 0;
  int64_t ratio = 1;          // dim / dim_delta
  int64_t dim_per_group = 1;  // dim / groups
  int64_t n_chunks = 0;
};

// What both passes read: the shape and the inputs.
struct ScanInputs {
  ScanShape shape;
  bool delta_softplus = false;
  const void *u = nullptr, *delta = nullptr, *B = nullptr, *C = nullptr, *z = nullptr;
  const float *A = nullptr, *D = nullptr, *delta_bias = nullptr;
};

struct ScanFwdParams : ScanInputs {
  void *out = nullptr;
  float *x = nullptr;
};

struct ScanBwdParams : ScanInputs {
  const void *dout = nullptr;  // in the output dtype
  const float *x = nullptr;
  void *du = nullptr, *dz = nullptr;  // input dtype
  // ddelta: written in the input dtype when ratio == 1, else accumulated into fp32 (zeroed).
  void *ddelta = nullptr;
  // fp32 accumulators, zeroed by the caller; dD / ddelta_bias may be null.
  float *dA = nullptr, *dB = nullptr, *dC = nullptr, *dD = nullptr, *ddelta_bias = nullptr;
};

// Launchers (selective_scan_fwd.cu / selective_scan_bwd.cu). `out_float32`: the output (forward) or
// the output gradient (backward) is fp32 instead of the input dtype. `stream` is a cudaStream_t.
void launch_selective_scan_fwd(const ScanFwdParams &params, ScanDtype input_dtype,
                               bool out_float32, void *stream);
void launch_selective_scan_bwd(const ScanBwdParams &params, ScanDtype input_dtype,
                               bool dout_float32, void *stream);

}  // namespace vssm_mm
