// Host emulation of the CUDA built-ins the selective-scan kernels use, so that the kernel
// source in csrc/selective_scan/*_kernel.cuh can be compiled by a C++20 host compiler and run on
// a CPU (one std::thread per CUDA thread, one block at a time). Test-only: it checks the
// kernels' algorithm (chunking, block scans, adjoint, atomics) on machines without a GPU.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

// fp16 through the compiler's _Float16; bf16 as the upper half of an fp32 (round to nearest even).
using __half = _Float16;
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half v) { return static_cast<float>(v); }
inline __half __float2half_rn(float v) { return static_cast<__half>(v); }
inline float __bfloat162float(__nv_bfloat16 v) {
  const uint32_t word = static_cast<uint32_t>(v.bits) << 16;
  float out;
  std::memcpy(&out, &word, sizeof(out));
  return out;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t word;
  std::memcpy(&word, &v, sizeof(word));
  word += 0x7fffu + ((word >> 16) & 1u);
  return {static_cast<uint16_t>(word >> 16)};
}

namespace vssm_emu {

struct Index {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local unsigned thread_id = 0;
inline Index block_index;
inline std::barrier<> *block_barrier = nullptr;
inline std::vector<float> dynamic_shared;
inline float shuffle_buffer[1024];

inline float *dynamic_smem() { return dynamic_shared.data(); }

// Every thread of the block publishes its value, then reads the source lane's.
inline float shuffle(float value, int source_lane, bool valid) {
  shuffle_buffer[thread_id] = value;
  block_barrier->arrive_and_wait();
  const unsigned warp_base = thread_id & ~31u;
  const float out = valid ? shuffle_buffer[warp_base + source_lane] : value;
  block_barrier->arrive_and_wait();
  return out;
}

// Runs kernel(params) for every block of a (grid_x, grid_y) grid, `threads` threads each.
template <typename Kernel, typename Params>
void launch(Kernel kernel, unsigned grid_x, unsigned grid_y, int threads, size_t smem_bytes,
            const Params &params) {
  dynamic_shared.assign(smem_bytes / sizeof(float) + 1, 0.0f);
  for (unsigned y = 0; y < grid_y; ++y) {
    for (unsigned x = 0; x < grid_x; ++x) {
      block_index = {x, y, 0};
      std::barrier<> barrier(threads);
      block_barrier = &barrier;
      std::vector<std::thread> pool;
      pool.reserve(threads);
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          thread_id = static_cast<unsigned>(t);
          kernel(params);
        });
      }
      for (auto &thread : pool) thread.join();
    }
  }
}

}  // namespace vssm_emu

#define threadIdx (::vssm_emu::Index{::vssm_emu::thread_id, 0, 0})
#define blockIdx (::vssm_emu::block_index)

inline void __syncthreads() { vssm_emu::block_barrier->arrive_and_wait(); }

inline float __shfl_up_sync(unsigned, float value, int offset) {
  const int lane = static_cast<int>(vssm_emu::thread_id & 31u);
  return vssm_emu::shuffle(value, lane - offset, lane >= offset);
}
inline float __shfl_down_sync(unsigned, float value, int offset) {
  const int lane = static_cast<int>(vssm_emu::thread_id & 31u);
  return vssm_emu::shuffle(value, lane + offset, lane + offset < 32);
}
inline float __shfl_xor_sync(unsigned, float value, int mask) {
  const int lane = static_cast<int>(vssm_emu::thread_id & 31u);
  return vssm_emu::shuffle(value, lane ^ mask, true);
}

inline float atomicAdd(float *address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}
