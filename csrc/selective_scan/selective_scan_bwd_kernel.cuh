// Backward selective scan: one thread block per (channel, batch) row, chunks in reverse order.
//
// For every chunk and state n the states are recomputed from the chunk's start state (x of the
// previous chunk, saved by the forward), then the adjoint runs backwards through the chunk:
//   lam[t] = C[t] dy[t] + mu[t+1],  mu[t] = a[t] lam[t]   (mu: the adjoint carried to token t-1)
// mu of the chunk's first token is carried to the previous chunk in shared memory. The per-token
// gradients follow Mamba's formulas (docs/selective_scan.md); dB and dC are summed over the
// channels of a group with fp32 atomics, dA / dD / ddelta_bias are reduced in the block first.
#pragma once

#include "scan_common.cuh"

namespace vssm_mm {

template <int kThreads, int kItems, typename in_t, typename dout_t>
__global__ void __launch_bounds__(kThreads)
    selective_scan_bwd_kernel(const ScanBwdParams p) {
  using T = Tile<kThreads, kItems>;
  __shared__ float smem_io[T::kSmemFloats];
  __shared__ Affine smem_scan[T::kWarps];
  __shared__ float smem_sum[T::kWarps];
  VSSM_DYNAMIC_SMEM(smem_dyn);
  float *smem_mu = smem_dyn;                   // dstate: adjoint carried from the later chunk
  float *smem_dA = smem_dyn + p.shape.dstate;  // dstate: dA summed over this row

  const ScanShape &s = p.shape;
  const RowInputs<in_t> in(p);
  const int64_t d = in.d, delta_row = in.delta_row, bc_row = in.bc_row;
  const in_t *u = in.u, *delta = in.delta, *z = in.z, *B0 = in.B, *C0 = in.C;
  const dout_t *dout = static_cast<const dout_t *>(p.dout) + in.row * s.length;
  const float *x = p.x + in.row * s.n_chunks * s.dstate;
  in_t *du = static_cast<in_t *>(p.du) + in.row * s.length;
  in_t *dz = p.dz ? static_cast<in_t *>(p.dz) + in.row * s.length : nullptr;
  const float bias = in.bias, skip = in.skip;

  for (int n = threadIdx.x; n < s.dstate; n += kThreads) {
    smem_mu[n] = 0.0f;
    smem_dA[n] = 0.0f;
  }
  float dD_part = 0.0f, dbias_part = 0.0f;

  for (int64_t chunk = s.n_chunks - 1; chunk >= 0; --chunk) {
    const int64_t start = chunk * T::kChunk;
    const int valid = static_cast<int>(s.length - start < T::kChunk ? s.length - start : T::kChunk);
    float u_r[kItems], dt_r[kItems], dy_r[kItems], y_r[kItems], du_r[kItems], ddt_r[kItems];
    T::load(u + start, valid, u_r, smem_io);
    T::load(delta + start, valid, dt_r, smem_io);
    T::load(dout + start, valid, dy_r, smem_io);
    if (z != nullptr) {
      float z_r[kItems];
      T::load(z + start, valid, z_r, smem_io);
#pragma unroll
      for (int j = 0; j < kItems; ++j) dy_r[j] *= z_r[j] * sigmoid(z_r[j]);
    }
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      float dt = dt_r[j] + bias;
      if (p.delta_softplus) dt = softplus(dt);
      dt_r[j] = threadIdx.x * kItems + j < valid ? dt : 0.0f;
      y_r[j] = skip * u_r[j];
      du_r[j] = skip * dy_r[j];
      ddt_r[j] = 0.0f;
      dD_part += dy_r[j] * u_r[j];
    }
    for (int n = 0; n < s.dstate; ++n) {
      const float A_n = p.A[d * s.dstate + n];
      const float a2 = A_n * kLog2e;
      float B_r[kItems], C_r[kItems], a_r[kItems], h_r[kItems];
      T::load(B0 + n * s.length + start, valid, B_r, smem_io);
      T::load(C0 + n * s.length + start, valid, C_r, smem_io);

      // Recompute the states of the chunk.
      Affine mine = {1.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        a_r[j] = exp2f(dt_r[j] * a2);
        h_r[j] = dt_r[j] * B_r[j] * u_r[j];
        mine = then(mine, Affine{a_r[j], h_r[j]});
      }
      const float h_start = chunk > 0 ? x[(chunk - 1) * s.dstate + n] : 0.0f;
      Affine total;
      Affine before = block_exclusive_scan<kThreads, true>(mine, total, smem_scan);
      const float h_in = before.a * h_start + before.b;  // state before this thread's tokens
      float h = h_in;
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        h = a_r[j] * h + h_r[j];
        h_r[j] = h;
      }

      // Adjoint: per token mu[t] = a[t] * (C[t] dy[t] + mu[t+1]), composed from the last token.
      mine = {1.0f, 0.0f};
#pragma unroll
      for (int j = kItems - 1; j >= 0; --j)
        mine = then(mine, Affine{a_r[j], a_r[j] * C_r[j] * dy_r[j]});
      const float mu_after = smem_mu[n];
      before = block_exclusive_scan<kThreads, false>(mine, total, smem_scan);
      float mu = before.a * mu_after + before.b;
      float dA_part = 0.0f, dB_r[kItems], dC_r[kItems];
#pragma unroll
      for (int j = kItems - 1; j >= 0; --j) {
        const float lam = C_r[j] * dy_r[j] + mu;
        mu = a_r[j] * lam;
        const float bu = B_r[j] * u_r[j];
        const float decayed = a_r[j] * (j > 0 ? h_r[j - 1] : h_in);  // a[t] h[t-1]
        ddt_r[j] += lam * (bu + A_n * decayed);
        du_r[j] += dt_r[j] * lam * B_r[j];
        dA_part += lam * dt_r[j] * decayed;
        dB_r[j] = lam * dt_r[j] * u_r[j];
        dC_r[j] = dy_r[j] * h_r[j];
        y_r[j] += C_r[j] * h_r[j];
      }
      if (threadIdx.x == 0) smem_mu[n] = total.a * mu_after + total.b;
      const float dA_sum = block_sum<kThreads>(dA_part, smem_sum);
      if (threadIdx.x == 0) smem_dA[n] += dA_sum;
      T::atomic_add(p.dB + (bc_row + n) * s.length + start, valid, dB_r, smem_io);
      T::atomic_add(p.dC + (bc_row + n) * s.length + start, valid, dC_r, smem_io);
    }

    if (dz != nullptr) {
      // d/dz [y z sigmoid(z)] = y sigmoid(z) (1 + z (1 - sigmoid(z)))
      float z_r[kItems], g_r[kItems];
      T::load(z + start, valid, z_r, smem_io);
      T::load(dout + start, valid, g_r, smem_io);
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        const float sig = sigmoid(z_r[j]);
        g_r[j] *= y_r[j] * sig * (1.0f + z_r[j] * (1.0f - sig));
      }
      T::store(dz + start, valid, g_r, smem_io);
    }
    T::store(du + start, valid, du_r, smem_io);
    if (p.delta_softplus) {
      float raw_r[kItems];
      T::load(delta + start, valid, raw_r, smem_io);
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        const float raw = raw_r[j] + bias;
        if (raw <= kSoftplusThreshold) ddt_r[j] *= sigmoid(raw);
      }
    }
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (threadIdx.x * kItems + j >= valid) ddt_r[j] = 0.0f;
      dbias_part += ddt_r[j];
    }
    if (s.ratio == 1) {
      T::store(static_cast<in_t *>(p.ddelta) + delta_row * s.length + start, valid, ddt_r,
               smem_io);
    } else {
      T::atomic_add(static_cast<float *>(p.ddelta) + delta_row * s.length + start, valid, ddt_r,
                    smem_io);
    }
  }

  for (int n = threadIdx.x; n < s.dstate; n += kThreads)
    atomicAdd(p.dA + d * s.dstate + n, smem_dA[n]);
  if (p.dD != nullptr) {
    const float total = block_sum<kThreads>(dD_part, smem_sum);
    if (threadIdx.x == 0) atomicAdd(p.dD + d, total);
  }
  if (p.ddelta_bias != nullptr) {
    const float total = block_sum<kThreads>(dbias_part, smem_sum);
    if (threadIdx.x == 0) atomicAdd(p.ddelta_bias + d / s.ratio, total);
  }
}

}  // namespace vssm_mm
