// Plain C++ interface between the torch bindings (selective_scan_cpu.cpp) and the SIMD kernels
// (scan_kernel.h, compiled once per instruction set). Nothing here includes torch: the kernel
// translation units are compiled with instruction-set pragmas and must not instantiate torch's
// inline functions, which would then be shared with code that runs on any CPU.
#pragma once

#include <cstdint>

namespace vssm_cpu {

// Tokens per saved state: the forward keeps the state after every chunk, the backward
// recomputes a chunk's states from the previous one.
constexpr int64_t kChunk = 64;
constexpr int64_t kMaxDState = 256;
// Pixels per block of the channels-first LayerNorm (norm_gate_channels): the (C, block) tile is
// read three times and should stay in L2.
constexpr int64_t kNormPixels = 256;

struct ScanShape {
  int64_t batch, dim, dim_delta, ratio, groups, per_group, dstate, length, n_chunks;
};

// All tensors fp32, contiguous. Optional ones are nullptr.
struct FwdArgs {
  ScanShape s;
  bool softplus;
  const float *u, *delta, *A, *B, *C, *D, *z, *bias;  // (b,dim,L) (b,dim_delta,L) (dim,N) (b,G,N,L)
  const float *Bt, *Ct;  // (b, G, L, N) copies of B and C for the row kernels, else nullptr
  float *out;                                          // (b, dim, L), gated by silu(z)
  bool stream_out;  // write out with streaming stores where the kernels have them (large outputs)
  float *states;                                       // (b, dim, n_chunks, N): state after each chunk
  // Optional delta in low rank (the forward alone, selective_scan_fwd_lowrank): when dlow is
  // not nullptr, delta[b, c, t] = sum_r dproj[c * rank + r] * dlow[b * dlow_sb +
  // (c / dlow_block) * dlow_sk + r * dlow_sr + t], summed in order of r, and delta is unused.
  const float *dlow = nullptr, *dproj = nullptr;
  int64_t rank = 0, dlow_block = 1, dlow_sb = 0, dlow_sk = 0, dlow_sr = 0;
};

struct BwdArgs {
  ScanShape s;
  bool softplus;
  const float *u, *delta, *A, *B, *C, *D, *z, *bias;
  const float *dout;    // (b, dim, L) gradient of the gated output
  const float *Bt, *Ct;  // (b, G, L, N) copies of B and C for the row kernels, else nullptr
  const float *dlast;   // (b, dim, N) gradient of the last state, or nullptr
  const float *states;  // as written by the forward
  float *du, *ddelta_ch, *dz;            // (b, dim, L); ddelta per channel of u (before delta groups)
  float *dA_part;                        // (b, dim, N) summed over tokens
  float *dD_part, *dbias_part;           // (b, dim) summed over tokens
  float *dB_part, *dC_part;  // (n_sub, b, G, N, L) summed over a unit's channels; the row
                             // kernels write (n_sub, b, G, L, N)
  int64_t vectors_per_unit;  // lane kernels: vectors of W channels per unit; row kernels: channels
  int64_t n_sub;
  bool stream_out;  // write du, ddelta_ch and dz with streaming stores where the kernels have them
};

// One instruction set's kernels. Lane kernels (any N; a vector holds lanes channels): a forward
// unit is (batch, group, one vector of channels), a backward unit is (batch, group, sub-block of
// vectors_per_unit vectors). Row kernels (N a multiple of lanes; a vector holds lanes states of
// one channel; nullptr where not compiled in): a forward unit is one (batch, channel) row, a
// backward unit (batch, group, sub-block of vectors_per_unit channels).
struct Kernels {
  const char *name;
  int lanes;
  int64_t (*fwd_scratch)(const ScanShape &);
  int64_t (*bwd_scratch)(const ScanShape &, int64_t vectors_per_unit);
  void (*fwd_unit)(const FwdArgs &, int64_t unit, float *scratch);
  void (*bwd_unit)(const BwdArgs &, int64_t unit, float *scratch);
  int64_t (*fwd_row_scratch)(const ScanShape &);
  int64_t (*bwd_row_scratch)(const ScanShape &, int64_t rows_per_unit);
  void (*fwd_row)(const FwdArgs &, int64_t unit, float *scratch);
  void (*bwd_row)(const BwdArgs &, int64_t unit, float *scratch);
  // LayerNorm over the channels of n pixels (a multiple of lanes, at most kNormPixels) of a
  // channels-first map, then the optional SiLU gate (every instruction set; norm_gate_cpu.cpp).
  void (*norm_gate_channels)(const float *x, int64_t x_stride, int64_t C, int64_t n,
                             const float *w, const float *b, float eps, const float *z,
                             int64_t z_stride, float *out, int64_t out_stride);
  // acc (C floats) += the sum of the LayerNorms (no affine part) of contiguous rows of C floats.
  void (*norm_sum_rows)(const float *x, int64_t rows, int64_t C, float eps, float *acc);
  // dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols.
  void (*transpose_block)(const float *src, int64_t src_stride, int64_t rows, int64_t cols,
                          float *dst, int64_t dst_stride);
  // silu(depthwise k x k conv + bias) of a channel-last H x Wd x C map at n pixels (row-major
  // indices, -1 for zeros), written as n rows of C floats out_stride apart (conv_scan_cpu.cpp).
  void (*dwconv_silu_pixels)(const float *x, int64_t H, int64_t Wd, int64_t C, const float *w,
                             const float *bias, int64_t k, const int64_t *pix, int64_t n,
                             float *out, int64_t out_stride);
};

// nullptr when the instruction set was not compiled in (the CPU is checked by the caller).
const Kernels *kernels_base();
const Kernels *kernels_avx2();
const Kernels *kernels_avx512();

}  // namespace vssm_cpu
