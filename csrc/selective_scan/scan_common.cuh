// Device helpers shared by the forward and backward kernels: dtype conversion, blocked loads and
// stores staged through shared memory, and block-wide scans of affine maps.
#pragma once

#include <cstdint>

#ifdef VSSM_CUDA_EMULATION
// Host emulation of the CUDA built-ins, used only by the CPU test of the kernel source
// (tests/ops/cuda_emulation).
#include "cuda_emulation.h"
#define VSSM_DYNAMIC_SMEM(name) float *name = ::vssm_emu::dynamic_smem()
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define VSSM_DYNAMIC_SMEM(name) extern __shared__ float name[]
#endif

#include "selective_scan.h"

namespace vssm_mm {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kSoftplusThreshold = 20.0f;  // as F.softplus: x itself above the threshold

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float softplus(float v) {
  return v <= kSoftplusThreshold ? log1pf(expf(v)) : v;
}

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

// (threads, items per thread) for each chunk length; the backward keeps more values per token
// in registers, so it uses more threads with fewer items for the longest chunks.
template <bool kBackward, typename F>
inline void for_launch_shape(int64_t length, F &&launch) {
  switch (scan_chunk_length(length)) {
    case 128:
      launch.template operator()<32, 4>();
      break;
    case 512:
      launch.template operator()<64, 8>();
      break;
    default:
      if constexpr (kBackward)
        launch.template operator()<256, 8>();
      else
        launch.template operator()<128, 16>();
  }
}

// The tensors of the (channel blockIdx.x, batch blockIdx.y) row a thread block works on.
template <typename in_t>
struct RowInputs {
  int64_t d, row, delta_row, bc_row;  // channel; rows of u, delta and B/C (state 0)
  const in_t *u, *delta, *z, *B, *C;  // z is null without a gate; B, C at state 0
  float bias, skip;

  __device__ explicit RowInputs(const ScanInputs &p) {
    const ScanShape &s = p.shape;
    d = blockIdx.x;
    const int64_t b = blockIdx.y;
    row = b * s.dim + d;
    delta_row = b * s.dim_delta + d / s.ratio;
    bc_row = (b * s.groups + d / s.dim_per_group) * s.dstate;
    u = static_cast<const in_t *>(p.u) + row * s.length;
    delta = static_cast<const in_t *>(p.delta) + delta_row * s.length;
    z = p.z ? static_cast<const in_t *>(p.z) + row * s.length : nullptr;
    B = static_cast<const in_t *>(p.B) + bc_row * s.length;
    C = static_cast<const in_t *>(p.C) + bc_row * s.length;
    bias = p.delta_bias ? p.delta_bias[d / s.ratio] : 0.0f;
    skip = p.D ? p.D[d] : 0.0f;
  }
};

// Calls launch.template operator()<in_t, out_t>() for the kernels' input dtype and the output
// (or output-gradient) dtype: the input dtype, or fp32 when out_float32.
template <typename F>
inline void for_dtypes(ScanDtype input_dtype, bool out_float32, F &&launch) {
  switch (input_dtype) {
    case ScanDtype::kFloat32:
      launch.template operator()<float, float>();
      break;
    case ScanDtype::kFloat16:
      if (out_float32)
        launch.template operator()<__half, float>();
      else
        launch.template operator()<__half, __half>();
      break;
    case ScanDtype::kBFloat16:
      if (out_float32)
        launch.template operator()<__nv_bfloat16, float>();
      else
        launch.template operator()<__nv_bfloat16, __nv_bfloat16>();
      break;
  }
}

// Shared-memory index with one padding word per 32, so that thread t reading its items
// t * kItems + j (the blocked arrangement) hits distinct banks.
__device__ __forceinline__ int padded(int i) { return i + (i >> 5); }

template <int kThreads, int kItems>
struct Tile {
  static constexpr int kChunk = kThreads * kItems;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kSmemFloats = kChunk + kChunk / 32;
  static_assert(kThreads % 32 == 0, "whole warps only");

  // Loads `valid` elements (the rest read as zero) into the blocked arrangement: thread t gets
  // elements t * kItems ... t * kItems + kItems - 1. Global reads are coalesced (striped), the
  // transposition goes through shared memory.
  template <typename T>
  static __device__ __forceinline__ void load(const T *__restrict__ src, int valid,
                                              float (&items)[kItems], float *smem) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int idx = i * kThreads + tid;
      smem[padded(idx)] = idx < valid ? to_float(src[idx]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kItems; ++j) items[j] = smem[padded(tid * kItems + j)];
    __syncthreads();
  }

  // Blocked arrangement -> shared memory, ready for a striped pass (see `store`/`atomic_add`).
  static __device__ __forceinline__ void to_smem(const float (&items)[kItems], float *smem) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int j = 0; j < kItems; ++j) smem[padded(tid * kItems + j)] = items[j];
    __syncthreads();
  }

  template <typename T>
  static __device__ __forceinline__ void store(T *__restrict__ dst, int valid,
                                               const float (&items)[kItems], float *smem) {
    to_smem(items, smem);
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int idx = i * kThreads + tid;
      if (idx < valid) dst[idx] = from_float<T>(smem[padded(idx)]);
    }
    __syncthreads();
  }

  // dst[i] += items (fp32 atomics), coalesced across the block.
  static __device__ __forceinline__ void atomic_add(float *__restrict__ dst, int valid,
                                                    const float (&items)[kItems], float *smem) {
    to_smem(items, smem);
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int idx = i * kThreads + tid;
      if (idx < valid) atomicAdd(dst + idx, smem[padded(idx)]);
    }
    __syncthreads();
  }
};

// An affine map x -> a * x + b. then(f, g) is "f, then g": x -> g.a * (f.a * x + f.b) + g.b.
struct Affine {
  float a, b;
};

__device__ __forceinline__ Affine then(Affine first, Affine second) {
  return {first.a * second.a, second.a * first.b + second.b};
}

// Block-wide exclusive scan of one affine map per thread.
//
// kForward: thread t receives the composition of the maps of threads 0 .. t-1 (applied in that
// order); otherwise the composition of threads kThreads-1 down to t+1 (a reverse scan).
// `total` receives the composition of all threads' maps in the scan order. `smem` holds kWarps
// Affine values; the call starts and ends with a barrier-separated use of it.
template <int kThreads, bool kForward>
__device__ __forceinline__ Affine block_exclusive_scan(Affine mine, Affine &total,
                                                       Affine *smem) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  Affine inclusive = mine;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    Affine other;
    if (kForward) {
      other.a = __shfl_up_sync(0xffffffffu, inclusive.a, offset);
      other.b = __shfl_up_sync(0xffffffffu, inclusive.b, offset);
      if (lane >= offset) inclusive = then(other, inclusive);
    } else {
      other.a = __shfl_down_sync(0xffffffffu, inclusive.a, offset);
      other.b = __shfl_down_sync(0xffffffffu, inclusive.b, offset);
      if (lane + offset < 32) inclusive = then(other, inclusive);
    }
  }
  if (lane == (kForward ? 31 : 0)) smem[warp] = inclusive;
  __syncthreads();
  // Exclusive within the warp: the inclusive value of the neighbour that comes before.
  Affine exclusive;
  if (kForward) {
    exclusive.a = __shfl_up_sync(0xffffffffu, inclusive.a, 1);
    exclusive.b = __shfl_up_sync(0xffffffffu, inclusive.b, 1);
    if (lane == 0) exclusive = {1.0f, 0.0f};
  } else {
    exclusive.a = __shfl_down_sync(0xffffffffu, inclusive.a, 1);
    exclusive.b = __shfl_down_sync(0xffffffffu, inclusive.b, 1);
    if (lane == 31) exclusive = {1.0f, 0.0f};
  }
  Affine before = {1.0f, 0.0f};  // warps that come before this one in the scan order
  total = {1.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < kWarps; ++i) {
    const int w = kForward ? i : kWarps - 1 - i;
    if (w == warp) before = total;
    total = then(total, smem[w]);
  }
  __syncthreads();
  return then(before, exclusive);
}

// Sum over the block; every thread gets the result. `smem` holds kWarps floats.
template <int kThreads>
__device__ __forceinline__ float block_sum(float v, float *smem) {
  constexpr int kWarps = kThreads / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += smem[w];
  __syncthreads();
  return total;
}

}  // namespace vssm_mm
