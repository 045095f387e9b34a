// Forward selective scan: one thread block per (channel, batch) row.
//
// The row is walked chunk by chunk (scan_chunk_length tokens; thread t owns kItems consecutive
// tokens of a chunk). For each state n the tokens' affine maps h -> a h + b, with
// a = exp(dt * A) and b = dt * B * u, are composed per thread, scanned across the block, applied
// to the state carried in from the previous chunk, and replayed per token to accumulate
// y += C * h. The state after every chunk is written to x for the backward pass.
#pragma once

#include "scan_common.cuh"

namespace vssm_mm {

template <int kThreads, int kItems, typename in_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    selective_scan_fwd_kernel(const ScanFwdParams p) {
  using T = Tile<kThreads, kItems>;
  __shared__ float smem_io[T::kSmemFloats];
  __shared__ Affine smem_scan[T::kWarps];
  VSSM_DYNAMIC_SMEM(smem_state);  // dstate floats: the state carried between chunks

  const ScanShape &s = p.shape;
  const RowInputs<in_t> in(p);
  const int64_t d = in.d;
  const in_t *u = in.u, *delta = in.delta, *z = in.z, *B0 = in.B, *C0 = in.C;
  out_t *out = static_cast<out_t *>(p.out) + in.row * s.length;
  float *x = p.x + in.row * s.n_chunks * s.dstate;
  const float bias = in.bias, skip = in.skip;

  for (int n = threadIdx.x; n < s.dstate; n += kThreads) smem_state[n] = 0.0f;
  // (the first load below has a barrier before anyone reads smem_state)

  for (int64_t chunk = 0; chunk < s.n_chunks; ++chunk) {
    const int64_t start = chunk * T::kChunk;
    const int valid = static_cast<int>(s.length - start < T::kChunk ? s.length - start : T::kChunk);
    float u_r[kItems], dt_r[kItems], y_r[kItems];
    T::load(u + start, valid, u_r, smem_io);
    T::load(delta + start, valid, dt_r, smem_io);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      float dt = dt_r[j] + bias;
      if (p.delta_softplus) dt = softplus(dt);
      // Tokens past the end get dt = 0: the identity map, so the carried state stays exact.
      dt_r[j] = threadIdx.x * kItems + j < valid ? dt : 0.0f;
      y_r[j] = skip * u_r[j];
    }
    for (int n = 0; n < s.dstate; ++n) {
      const float a2 = p.A[d * s.dstate + n] * kLog2e;
      float B_r[kItems], C_r[kItems], a_r[kItems], h_r[kItems];
      T::load(B0 + n * s.length + start, valid, B_r, smem_io);
      T::load(C0 + n * s.length + start, valid, C_r, smem_io);
      Affine mine = {1.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        a_r[j] = exp2f(dt_r[j] * a2);
        h_r[j] = dt_r[j] * B_r[j] * u_r[j];
        mine = then(mine, Affine{a_r[j], h_r[j]});
      }
      const float carried = smem_state[n];
      Affine total;
      const Affine before = block_exclusive_scan<kThreads, true>(mine, total, smem_scan);
      float h = before.a * carried + before.b;
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        h = a_r[j] * h + h_r[j];
        y_r[j] += C_r[j] * h;
      }
      if (threadIdx.x == 0) {
        const float next = total.a * carried + total.b;
        smem_state[n] = next;
        x[chunk * s.dstate + n] = next;
      }
    }
    if (z != nullptr) {
      float z_r[kItems];
      T::load(z + start, valid, z_r, smem_io);
#pragma unroll
      for (int j = 0; j < kItems; ++j) y_r[j] *= z_r[j] * sigmoid(z_r[j]);
    }
    T::store(out + start, valid, y_r, smem_io);
  }
}

}  // namespace vssm_mm
