// The selective-scan kernels for CPU tensors, written once with GCC/Clang vector extensions and
// compiled once per instruction set (scan_kernel_{base,avx2,avx512}.cpp define VSSM_ISA and
// VSSM_LANES before including this file). Semantics and gradients: docs/selective_scan.md.
//
// Layout: the lanes of a vector are lanes() consecutive channels of one B/C group, so B[t, n]
// and C[t, n] are scalars broadcast to all lanes and no sum over lanes is needed in the forward.
// Tokens are processed in chunks of kChunk: a chunk of every input row is transposed into a
// (token, lane) tile, scanned with the state h[n] of all lanes in L1, and transposed back.
// The backward walks the chunks in reverse, recomputes a chunk's states from the state saved
// after the previous chunk, and runs the adjoint over the chunk.
//
// Only plain C++ and the vector extensions are used here (no std:: calls, no torch): every
// function is local to the instruction set's namespace.
#include <cstdint>

#include "scan_cpu.h"

#if defined(VSSM_AVX2) || defined(VSSM_AVX512)
#include <immintrin.h>
#endif

#ifndef VSSM_ISA
#error "define VSSM_ISA and VSSM_LANES before including scan_kernel.h"
#endif

// Vectors are passed by value between the functions of one translation unit only.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace vssm_cpu {
namespace VSSM_ISA {
namespace {

constexpr int W = VSSM_LANES;
typedef float V __attribute__((vector_size(4 * W)));
typedef int32_t VI __attribute__((vector_size(4 * W)));
typedef uint32_t VU __attribute__((vector_size(4 * W)));

#define VSSM_INLINE inline __attribute__((always_inline))

constexpr float kLog2e = 1.4426950408889634f;
// F.softplus returns its input unchanged above this value; so do the kernels.
constexpr float kSoftplusThreshold = 20.0f;
// exp2 arguments are clamped to this range: below 2^-126 a decay is zero for every practical
// purpose, and the clamp keeps both exp2 and later products out of subnormal arithmetic.
constexpr float kMinExp2 = -126.0f, kMaxExp2 = 126.0f;

VSSM_INLINE V vload(const float *p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
VSSM_INLINE void vstore(float *p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
// A broadcast (for x86 one instruction: V{} + s makes the compiler add 0.0 first, which
// changes -0.0, and a loop over lanes becomes one insert per lane).
VSSM_INLINE V vset(float s) {
#if defined(VSSM_AVX512)
  return (V)_mm512_set1_ps(s);
#elif defined(VSSM_AVX2)
  return (V)_mm256_set1_ps(s);
#else
  return V{} + s;
#endif
}
VSSM_INLINE V vselect(VI mask, V a, V b) { return mask ? a : b; }
// max/min with x86's rule (the second operand when either is NaN): one instruction where known.
VSSM_INLINE V vmax(V a, V b) {
#if defined(VSSM_AVX512)
  return (V)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(VSSM_AVX2)
  return (V)_mm256_max_ps((__m256)a, (__m256)b);
#else
  return a > b ? a : b;
#endif
}
VSSM_INLINE V vmin(V a, V b) {
#if defined(VSSM_AVX512)
  return (V)_mm512_min_ps((__m512)a, (__m512)b);
#elif defined(VSSM_AVX2)
  return (V)_mm256_min_ps((__m256)a, (__m256)b);
#else
  return a < b ? a : b;
#endif
}
VSSM_INLINE V vabs(V a) { return (V)((VI)a & 0x7fffffff); }
VSSM_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// 2^x = 2^k p(x - k), k = round(x), p a degree-6 polynomial on [-1/2, 1/2] (relative error
// below 1e-7, about 1.5 ulp). Arguments below kMinExp2 give 2^kMinExp2 (a decay that small is
// zero for every practical purpose, and the clamp keeps later products out of subnormal
// arithmetic); above kMaxExp2, 2^kMaxExp2 (inf with AVX-512; exp overflows there anyway).
VSSM_INLINE V exp2_poly(V f) {
  V p = vset(1.5353296475950629e-4f);
  p = p * f + 1.3398852897807956e-3f;
  p = p * f + 9.618437848985195e-3f;
  p = p * f + 5.5503323674201965e-2f;
  p = p * f + 2.4022647738456726e-1f;
  p = p * f + 6.931471824645996e-1f;
  return p * f + 1.0f;
}

// 2^x for x in [kMinExp2, kMaxExp2] (other x give wrong results: callers clamp or check).
VSSM_INLINE V exp2_in_range(V x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer k
  const V t = x + magic;
  const V p = exp2_poly(x - (t - magic));
  // The bits of t are 0x4B400000 + k; shifted by 23 only k << 23 is left (0x4B400000 << 23 is
  // 0 modulo 2^32), which adds k to the exponent of p.
  return (V)((VU)p + ((VU)t << 23));
}

VSSM_INLINE V vclamp_exp2(V x) {
#if defined(VSSM_AVX512)
  // scalef multiplies by 2^k without exponent arithmetic (large x give inf instead of the
  // ceiling), so only the floor needs a clamp.
  x = vmax(x, vset(kMinExp2));
  const __m512 k = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (V)_mm512_scalef_ps((__m512)exp2_poly(x - (V)k), k);
#else
  return exp2_in_range(vmin(vmax(x, vset(kMinExp2)), vset(kMaxExp2)));
#endif
}

// e^x, x clamped to [-87, 87] (e^-87 is below every practical decay and above 2^-126, e^87
// below the float range). k = round(x log2 e), r = x - k ln 2 in two steps (ln 2 = kLn2Hi +
// kLn2Lo, kLn2Hi with 9 significant bits so that k kLn2Hi is exact), e^r = 1 + r + r^2 P(r)
// with P a minimax quartic on |r| <= ln 2 / 2: about 1 ulp. (2^(x log2 e) through exp2 would
// carry the rounding of x log2 e into the result: 3e-7 typical for softplus's arguments.)
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
VSSM_INLINE V vexp(V x) {
  x = vmin(vmax(x, vset(-87.0f)), vset(87.0f));
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer k
  const V t = x * kLog2e + magic, k = t - magic;
  const V r = (x - k * kLn2Hi) - k * kLn2Lo;
  V p = vset(1.37514085508883e-3f);
  p = p * r + 8.368917740881443e-3f;
  p = p * r + 4.166953265666962e-2f;
  p = p * r + 1.66665181517601e-1f;
  p = p * r + 4.9999988079071045e-1f;
  const V e = ((r * r) * p + r) + 1.0f;
  return (V)((VU)e + ((VU)t << 23));  // adds k to the exponent, as in exp2_in_range
}

VSSM_INLINE V vsigmoid(V x) { return 1.0f / (1.0f + vexp(-x)); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), x itself above the threshold, from
// e = exp(-|x|) (softplus_exp). log1p(e) for e in (0, 1] is 2 atanh(s) = 2 s + 2 s^3 q(s^2)
// with s = e / (2 + e) <= 1/3 and q a minimax cubic for (atanh(s) / s - 1) / s^2 on s^2 in
// [0, 1/9] (relative error of the sum below 5e-9 before rounding; the correction term is at
// most 1/27 of the total, so its rounding barely counts).
//
// Callers take the exps of a whole chunk in one loop and the rest in a second: in one loop,
// the chain of dependent operations per vector (about 90 cycles) kept too few vectors in the
// out-of-order window, and softplus was 1.3x slower (1.5x with its derivative, which reuses e).
VSSM_INLINE V softplus_exp(V x) { return vexp(-vabs(x)); }

VSSM_INLINE V vsoftplus(V x, V e) {
  const V s = e / (e + 2.0f);
  const V s2 = s * s, two_s = s + s;
  V q = vset(0.14007605612277985f);
  q = q * s2 + 0.14000415802001953f;
  q = q * s2 + 0.2001080960035324f;
  q = q * s2 + 0.3333320617675781f;
  const V r = vmax(x, V{}) + ((two_s * s2) * q + two_s);
  return vselect(x > kSoftplusThreshold, x, r);
}

// d softplus / dx = sigmoid(x), 1 above the threshold; e = exp(-|x|) as for vsoftplus:
// sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below.
VSSM_INLINE V vsoftplus_grad(V x, V e) {
  const V r = 1.0f / (1.0f + e);
  return vselect(x > kSoftplusThreshold, vset(1.0f), vselect(x >= 0.0f, r, e * r));
}

VSSM_INLINE float hsum(V v) {
  float lanes[W];
  __builtin_memcpy(lanes, &v, sizeof(V));
  float total = 0.0f;
  for (int l = 0; l < W; ++l) total += lanes[l];
  return total;
}

// out[i] = the sum of the W lanes of the vector at v + i * stride, for i < W: a tree of
// shuffles and adds, about three operations per vector where hsum takes W - 1 dependent scalar
// adds (the lane sums of dB and dC were 18% of the N = 16 backward with hsum).
VSSM_INLINE void reduce_lanes(const float *v, int64_t stride, float *out) {
#if defined(VSSM_AVX512)
  // Level by level, each add halves the lanes of a source: 256-bit halves, 128-bit blocks,
  // pairs, single lanes. The sources are loaded in the order that puts the sum of vector i in
  // lane i at the end.
  static constexpr int kOrder[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 x = _mm512_loadu_ps(v + kOrder[i] * stride);
    const __m512 y = _mm512_loadu_ps(v + kOrder[i + 8] * stride);
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
  }
  for (int i = 0; i < 4; ++i)
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 4], 0x88),
                         _mm512_shuffle_f32x4(a[i], a[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[i], b[i + 2], 0x44),
                         _mm512_shuffle_ps(b[i], b[i + 2], 0xEE));
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88),
                                      _mm512_shuffle_ps(c[0], c[1], 0xDD)));
#elif defined(VSSM_AVX2) && VSSM_LANES == 8
  const float *r[8];
  for (int i = 0; i < 8; ++i) r[i] = v + i * stride;
  const __m256 t0 = _mm256_hadd_ps(_mm256_loadu_ps(r[0]), _mm256_loadu_ps(r[1]));
  const __m256 t1 = _mm256_hadd_ps(_mm256_loadu_ps(r[2]), _mm256_loadu_ps(r[3]));
  const __m256 t2 = _mm256_hadd_ps(_mm256_loadu_ps(r[4]), _mm256_loadu_ps(r[5]));
  const __m256 t3 = _mm256_hadd_ps(_mm256_loadu_ps(r[6]), _mm256_loadu_ps(r[7]));
  // u0 lanes: vectors 0-3 summed over lanes 0-3, then vectors 0-3 over lanes 4-7; u1: 4-7.
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                      _mm256_permute2f128_ps(u0, u1, 0x31)));
#else
  for (int i = 0; i < W; ++i) out[i] = hsum(vload(v + i * stride));
#endif
}

#if defined(VSSM_AVX2) || defined(VSSM_AVX512)
// The 8 x 8 transpose of r[0..7] in place: r[k][l] becomes r[l][k].
VSSM_INLINE void transpose8(__m256 *r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  // s0: element 0 (low half) and 4 (high half) of rows 0-3; s1: elements 1 and 5; ...
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

// tile[t][l] = base[offset[l] + t] for t < T (x86: 8 x 8 register transposes, per 8 lanes,
// the last T % 8 tokens one by one). Returns false where this is not compiled in.
bool rows_to_tile(float *tile, const float *base, const int64_t *offset, int64_t T) {
#if defined(VSSM_AVX2) || defined(VSSM_AVX512)
  int64_t t = 0;
  for (; t + 8 <= T; t += 8) {
    for (int h = 0; h < W; h += 8) {
      __m256 r[8];
      for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(base + offset[h + l] + t);
      transpose8(r);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(tile + (t + k) * W + h, r[k]);
    }
  }
  for (; t < T; ++t)
    for (int l = 0; l < W; ++l) tile[t * W + l] = base[offset[l] + t];
  return true;
#else
  (void)tile, (void)base, (void)offset, (void)T;
  return false;
#endif
}

// tile[t][l] = rows[l][t] for t < T, l < nl (rows[l] = base + l * row_stride), zero elsewhere.
void load_tile(float *tile, const float *base, int64_t row_stride, int nl, int64_t T) {
  if (nl == W) {
    int64_t offset[W];
    for (int l = 0; l < W; ++l) offset[l] = l * row_stride;
    if (rows_to_tile(tile, base, offset, T)) return;
  }
  for (int l = 0; l < W; ++l) {
    if (l < nl) {
      const float *row = base + l * row_stride;
      for (int64_t t = 0; t < T; ++t) tile[t * W + l] = row[t];
    } else {
      for (int64_t t = 0; t < T; ++t) tile[t * W + l] = 0.0f;
    }
  }
}

// The (T, W) tile of delta for channels c0 .. c0 + nl - 1: channel c reads delta row c / ratio.
void load_delta_tile(float *tile, const float *delta_rows, const ScanShape &s, int64_t c0, int nl,
                     int64_t t0, int64_t T) {
  const float *base = delta_rows + (c0 / s.ratio) * s.length + t0;
  if (nl == W) {
    int64_t offset[W];
    for (int l = 0; l < W; ++l) offset[l] = ((c0 + l) / s.ratio - c0 / s.ratio) * s.length;
    if (rows_to_tile(tile, base, offset, T)) return;
  }
  for (int l = 0; l < W; ++l) {
    const float *src = delta_rows + ((c0 + l) / s.ratio) * s.length + t0;
    for (int64_t t = 0; t < T; ++t) tile[t * W + l] = l < nl ? src[t] : 0.0f;
  }
}

// The (T, W) tile of delta for channels c0 .. c0 + nl - 1 from its low-rank factors (FwdArgs:
// dlow, dproj): one multiply-add per rank and token when the lanes share their block of dlow
// (the usual case: blocks of whole vectors), lane by lane otherwise; lanes >= nl are zero.
void lowrank_delta_tile(float *tile, const FwdArgs &a, int64_t b, int64_t c0, int nl, int64_t t0,
                        int64_t T) {
  for (int64_t i = 0; i < T * W; ++i) tile[i] = 0.0f;
  const float *low_b = a.dlow + b * a.dlow_sb + t0;
  if (c0 / a.dlow_block == (c0 + nl - 1) / a.dlow_block) {
    const float *low = low_b + (c0 / a.dlow_block) * a.dlow_sk;
    for (int64_t r = 0; r < a.rank; ++r) {
      float lanes[W];
      for (int l = 0; l < W; ++l) lanes[l] = l < nl ? a.dproj[(c0 + l) * a.rank + r] : 0.0f;
      const V p = vload(lanes);
      const float *lr = low + r * a.dlow_sr;
      for (int64_t t = 0; t < T; ++t) vstore(tile + t * W, vload(tile + t * W) + p * vset(lr[t]));
    }
    return;
  }
  for (int l = 0; l < nl; ++l) {
    const float *low = low_b + ((c0 + l) / a.dlow_block) * a.dlow_sk;
    for (int64_t r = 0; r < a.rank; ++r) {
      const float p = a.dproj[(c0 + l) * a.rank + r];
      for (int64_t t = 0; t < T; ++t) tile[t * W + l] += p * low[r * a.dlow_sr + t];
    }
  }
}

void store_tile(float *base, int64_t row_stride, const float *tile, int nl, int64_t T,
                bool streaming = false) {
  int64_t t = 0;
#if defined(VSSM_AVX512)
  // Streaming (non-temporal) stores of whole 64-byte lines, which skip reading each line
  // before it is written (for outputs too large to stay in the caches anyway).
  if (streaming && nl == W && row_stride % 16 == 0 && ((uintptr_t)base & 63) == 0) {
    for (; t + 16 <= T; t += 16) {
      for (int h = 0; h < W; h += 8) {
        __m256 r[8], q[8];
        for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(tile + (t + k) * W + h);
        for (int k = 0; k < 8; ++k) q[k] = _mm256_loadu_ps(tile + (t + 8 + k) * W + h);
        transpose8(r);
        transpose8(q);
        for (int l = 0; l < 8; ++l)
          _mm512_stream_ps(base + (h + l) * row_stride + t,
                           _mm512_insertf32x8(_mm512_castps256_ps512(r[l]), q[l], 1));
      }
    }
  }
#endif
#if defined(VSSM_AVX2) || defined(VSSM_AVX512)
  for (; t + 8 <= T; t += 8) {
    for (int h = 0; h < nl; h += 8) {
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(tile + (t + k) * W + h);
      transpose8(r);
      for (int l = 0; l < 8 && h + l < nl; ++l) _mm256_storeu_ps(base + (h + l) * row_stride + t, r[l]);
    }
  }
#endif
  for (int l = 0; l < nl; ++l) {
    float *row = base + l * row_stride;
    for (int64_t u = t; u < T; ++u) row[u] = tile[u * W + l];
  }
}

// Lane constants of channels c0 .. c0 + nl - 1: dst[n * W + l] = src[(c0 + l) * N + n] * scale.
void load_lane_matrix(float *dst, const float *src, int64_t c0, int nl, int64_t N, float scale) {
  for (int64_t n = 0; n < N; ++n)
    for (int l = 0; l < W; ++l) dst[n * W + l] = l < nl ? src[(c0 + l) * N + n] * scale : 0.0f;
}

V load_lanes(const float *src, int64_t c0, int nl, int64_t ratio = 1) {
  float lanes[W];
  for (int l = 0; l < W; ++l) lanes[l] = (src != nullptr && l < nl) ? src[(c0 + l) / ratio] : 0.0f;
  return vload(lanes);
}

struct Unit {
  int64_t b, g, c0;
  int nl;  // valid lanes (channels of the group left)
};

Unit vector_unit(const ScanShape &s, int64_t bg, int64_t v) {
  Unit u;
  u.g = bg % s.groups;
  u.b = bg / s.groups;
  u.c0 = u.g * s.per_group + v * W;
  u.nl = (int)imin(W, (u.g + 1) * s.per_group - u.c0);
  return u;
}

int64_t num_vectors(const ScanShape &s) { return (s.per_group + W - 1) / W; }

// dt = softplus(delta + bias) (or without softplus) over a (T, W) tile, in place; the
// derivative of the activation goes to grad when grad != nullptr.
void activate_delta(float *tile, float *grad, V bias, bool softplus, int64_t T) {
  if (!softplus) {
    for (int64_t t = 0; t < T; ++t) vstore(tile + t * W, vload(tile + t * W) + bias);
    return;
  }
  float e[kChunk * W];
  for (int64_t t = 0; t < T; ++t) vstore(e + t * W, softplus_exp(vload(tile + t * W) + bias));
  for (int64_t t = 0; t < T; ++t) {
    const V x = vload(tile + t * W) + bias, ev = vload(e + t * W);
    if (grad != nullptr) vstore(grad + t * W, vsoftplus_grad(x, ev));
    vstore(tile + t * W, vsoftplus(x, ev));
  }
}

// One token of the scan for the N states of a vector of lanes:
// h_out[n] = exp(dt A[n]) h_in[n] + dt u B[n] (the decays also go to decay_out unless it is
// nullptr; h_out may be h_in). Returns y = sum_n C[n] h_out[n] + D u, summed in four partial
// sums (independent dependency chains).
VSSM_INLINE V scan_token(int64_t N, V dtv, V uv, V Dv, const float *A2, const float *h_in,
                         float *h_out, float *decay_out, const float *Bt, const float *Ct,
                         int64_t L) {
  const V du = dtv * uv;
  auto state = [&](int64_t n) {
    const V decay = vclamp_exp2(dtv * vload(A2 + n * W));
    const V h = decay * vload(h_in + n * W) + du * Bt[n * L];
    if (decay_out != nullptr) vstore(decay_out + n * W, decay);
    vstore(h_out + n * W, h);
    return h * Ct[n * L];
  };
  V y0 = V{}, y1 = V{}, y2 = V{}, y3 = V{};
  for (int64_t q = 0; q < N / 4; ++q) {
    y0 += state(4 * q);
    y1 += state(4 * q + 1);
    y2 += state(4 * q + 2);
    y3 += state(4 * q + 3);
  }
  for (int64_t n = N / 4 * 4; n < N; ++n) y0 += state(n);
  return (y0 + y1) + (y2 + y3) + Dv * uv;
}

// Software prefetch of the rows a unit reads next, from token t1 of channels un.c0 ..: called
// at t = 0, 1, ... of a token loop, each call asks for one 64-byte line (line t % 4 of channel
// t / 4: the kChunk tokens of W channels over the loop). rows is the input's first row of the
// batch (nullptr: none); channel c reads row c / ratio. The chunks are short pieces of many
// rows, which the hardware prefetchers do not follow, and asking for all of them at once
// overflows the miss buffers; spread over the loop, the lines arrive before they are needed
// (1.17x on the LocalVMamba-T forward). Inline: GCC drops a call to a function that does
// nothing but prefetch.
VSSM_INLINE void prefetch_line(const float *rows, int64_t ratio, const ScanShape &s,
                               const Unit &un, int64_t t, int64_t t1) {
  static_assert(kChunk == 64, "four lines of 16 floats per row and chunk");
  const int64_t l = t >> 2, i = t1 + (t & 3) * 16;
  if (rows != nullptr && l < un.nl && i < s.length)
    __builtin_prefetch(rows + ((un.c0 + l) / ratio) * s.length + i);
}

// scan_token for N = NS known at compile time, the states h[n] in registers; the new states
// and the decays also go to h_out and decay_out unless they are nullptr.
template <int NS>
VSSM_INLINE V scan_token_regs(V *h, V dtv, V uv, V Dv, const float *A2, const float *Bt,
                              const float *Ct, int64_t L, float *h_out = nullptr,
                              float *decay_out = nullptr) {
  const V du = dtv * uv;
  V y[4] = {V{}, V{}, V{}, V{}};
#pragma GCC unroll 64
  for (int n = 0; n < NS; ++n) {
    const V decay = vclamp_exp2(dtv * vload(A2 + n * W));
    h[n] = decay * h[n] + du * Bt[n * L];
    if (decay_out != nullptr) vstore(decay_out + n * W, decay);
    if (h_out != nullptr) vstore(h_out + n * W, h[n]);
    y[n % 4] += h[n] * Ct[n * L];
  }
  return (y[0] + y[1]) + (y[2] + y[3]) + Dv * uv;
}

// ---------------------------------------------------------------------------------------------
// Forward: one unit is (batch, group, vector v of W channels), all tokens.
// ---------------------------------------------------------------------------------------------
int64_t fwd_scratch(const ScanShape &s) { return (2 * s.dstate + 4 * kChunk) * W; }

template <int NS>
void fwd_unit_impl(const FwdArgs &a, int64_t unit, float *scratch) {
  const ScanShape &s = a.s;
  const int64_t N = NS > 0 ? NS : s.dstate, L = s.length;
  const int64_t nvec = num_vectors(s);
  const Unit un = vector_unit(s, unit / nvec, unit % nvec);
  float *h = scratch, *A2 = h + N * W, *dt = A2 + N * W, *uu = dt + kChunk * W,
        *yy = uu + kChunk * W, *zz = yy + kChunk * W;
  load_lane_matrix(A2, a.A, un.c0, un.nl, N, kLog2e);
  for (int64_t i = 0; i < N * W; ++i) h[i] = 0.0f;
  const V Dv = load_lanes(a.D, un.c0, un.nl), bias = load_lanes(a.bias, un.c0, un.nl, s.ratio);
  const float *Bg = a.B + (un.b * s.groups + un.g) * N * L;
  const float *Cg = a.C + (un.b * s.groups + un.g) * N * L;
  const int64_t row = (un.b * s.dim + un.c0) * L;
  const float *delta_rows = a.dlow == nullptr ? a.delta + (un.b * s.dim_delta) * L : nullptr;
  const float *u_rows = a.u + un.b * s.dim * L;
  const float *z_rows = a.z != nullptr ? a.z + un.b * s.dim * L : nullptr;
  // Always inlined, like prefetch_line (a call that only prefetches would be dropped).
  auto prefetch_next = [&](int64_t t, int64_t t1) __attribute__((always_inline)) {
    prefetch_line(u_rows, 1, s, un, t, t1);
    if (a.dlow == nullptr) prefetch_line(delta_rows, s.ratio, s, un, t, t1);
    prefetch_line(z_rows, 1, s, un, t, t1);
  };
  for (int64_t k = 0; k < s.n_chunks; ++k) {
    const int64_t t0 = k * kChunk, T = imin(kChunk, L - t0);
    if (a.dlow != nullptr) {
      lowrank_delta_tile(dt, a, un.b, un.c0, un.nl, t0, T);
    } else {
      load_delta_tile(dt, delta_rows, s, un.c0, un.nl, t0, T);
    }
    load_tile(uu, a.u + row + t0, L, un.nl, T);
    activate_delta(dt, nullptr, bias, a.softplus, T);
    if (NS > 0) {
      // N known at compile time: the states stay in registers over the chunk.
      V hr[NS > 0 ? NS : 1];
      for (int64_t n = 0; n < NS; ++n) hr[n] = vload(h + n * W);
      for (int64_t t = 0; t < T; ++t) {
        prefetch_next(t, t0 + kChunk);
        vstore(yy + t * W, scan_token_regs<NS>(hr, vload(dt + t * W), vload(uu + t * W), Dv, A2,
                                               Bg + t0 + t, Cg + t0 + t, L));
      }
      for (int64_t n = 0; n < NS; ++n) vstore(h + n * W, hr[n]);
    } else {
      for (int64_t t = 0; t < T; ++t) {
        prefetch_next(t, t0 + kChunk);
        vstore(yy + t * W, scan_token(N, vload(dt + t * W), vload(uu + t * W), Dv, A2, h, h,
                                      nullptr, Bg + t0 + t, Cg + t0 + t, L));
      }
    }
    if (a.z != nullptr) {
      load_tile(zz, a.z + row + t0, L, un.nl, T);
      for (int64_t t = 0; t < T; ++t) {
        const V zv = vload(zz + t * W);
        vstore(yy + t * W, vload(yy + t * W) * zv * vsigmoid(zv));
      }
    }
    store_tile(a.out + row + t0, L, yy, un.nl, T, a.stream_out);
    // The state after the chunk: lane l's N states to its channel's row of states.
    store_tile(a.states + ((un.b * s.dim + un.c0) * s.n_chunks + k) * N, s.n_chunks * N, h,
               un.nl, N);
  }
#if defined(VSSM_AVX512)
  _mm_sfence();  // the streaming stores are visible to other threads after this
#endif
}

void fwd_unit(const FwdArgs &a, int64_t unit, float *scratch) {
  switch (a.s.dstate) {
    case 1: return fwd_unit_impl<1>(a, unit, scratch);
    case 16: return fwd_unit_impl<16>(a, unit, scratch);
    default: return fwd_unit_impl<0>(a, unit, scratch);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: one unit is (batch, group, vectors [v0, v0 + vectors_per_unit)), all tokens, so
// that dB and dC of a chunk are summed over the unit's channels before they are stored.
// ---------------------------------------------------------------------------------------------
constexpr int kTiles = 10;  // per-token tiles of the backward

int64_t bwd_scratch(const ScanShape &s, int64_t nv) {
  const int64_t N = s.dstate;
  return (4 * nv * N + 4 * nv + N + (kChunk + 1) * N + 3 * kChunk * N + kTiles * kChunk) * W;
}

template <int NS>
void bwd_unit_impl(const BwdArgs &a, int64_t unit, float *scratch) {
  const ScanShape &s = a.s;
  const int64_t N = NS > 0 ? NS : s.dstate, L = s.length, K = kChunk;
  const int64_t nvec = num_vectors(s);
  const int64_t sub = unit % a.n_sub, bg = unit / a.n_sub;
  const int64_t v0 = sub * a.vectors_per_unit, nv = imin(nvec, v0 + a.vectors_per_unit) - v0;
  // Per vector of the unit, carried over chunks.
  float *lam = scratch, *dA = lam + nv * N * W, *A2 = dA + nv * N * W, *Aw = A2 + nv * N * W;
  float *Dw = Aw + nv * N * W, *biasw = Dw + nv * W, *dDw = biasw + nv * W, *dbw = dDw + nv * W;
  // Per chunk. Sums over tokens are taken per chunk, then added to the totals (two-level
  // summation keeps the rounding error of 70,000-token sums near that of 64-token ones).
  float *dAc = dbw + nv * W;
  float *H = dAc + N * W;  // (K + 1, N, W): H[0] the state before the chunk, H[t + 1] after t
  float *decay = H + (K + 1) * N * W, *dBacc = decay + K * N * W, *dCacc = dBacc + K * N * W;
  float *dt = dCacc + K * N * W, *sg = dt + K * W, *uu = sg + K * W, *dy = uu + K * W,
        *go = dy + K * W, *zz = go + K * W, *zs = zz + K * W, *yy = zs + K * W,
        *ddt = yy + K * W, *dut = ddt + K * W;

  Unit first = vector_unit(s, bg, v0);
  const int64_t b = first.b, g = first.g;
  for (int64_t vi = 0; vi < nv; ++vi) {
    const Unit un = vector_unit(s, bg, v0 + vi);
    load_lane_matrix(A2 + vi * N * W, a.A, un.c0, un.nl, N, kLog2e);
    load_lane_matrix(Aw + vi * N * W, a.A, un.c0, un.nl, N, 1.0f);
    if (a.dlast != nullptr) {
      load_lane_matrix(lam + vi * N * W, a.dlast + b * s.dim * N, un.c0, un.nl, N, 1.0f);
    } else {
      for (int64_t i = 0; i < N * W; ++i) lam[vi * N * W + i] = 0.0f;
    }
    for (int64_t i = 0; i < N * W; ++i) dA[vi * N * W + i] = 0.0f;
    vstore(Dw + vi * W, load_lanes(a.D, un.c0, un.nl));
    vstore(biasw + vi * W, load_lanes(a.bias, un.c0, un.nl, s.ratio));
    vstore(dDw + vi * W, V{});
    vstore(dbw + vi * W, V{});
  }
  const float *Bg = a.B + (b * s.groups + g) * N * L;
  const float *Cg = a.C + (b * s.groups + g) * N * L;
  const float *delta_rows = a.delta + (b * s.dim_delta) * L;

  for (int64_t k = s.n_chunks - 1; k >= 0; --k) {
    const int64_t t0 = k * K, T = imin(K, L - t0);
    for (int64_t i = 0; i < T * N * W; ++i) dBacc[i] = dCacc[i] = 0.0f;
    for (int64_t vi = 0; vi < nv; ++vi) {
      const Unit un = vector_unit(s, bg, v0 + vi);
      const int64_t row = (b * s.dim + un.c0) * L;
      const float *A2v = A2 + vi * N * W, *Av = Aw + vi * N * W;
      float *carry = lam + vi * N * W, *dAv = dAc;
      for (int64_t i = 0; i < N * W; ++i) dAc[i] = 0.0f;
      const V Dv = vload(Dw + vi * W);
      load_delta_tile(dt, delta_rows, s, un.c0, un.nl, t0, T);
      activate_delta(dt, sg, vload(biasw + vi * W), a.softplus, T);
      load_tile(uu, a.u + row + t0, L, un.nl, T);
      load_tile(go, a.dout + row + t0, L, un.nl, T);
      if (a.z != nullptr) {
        load_tile(zz, a.z + row + t0, L, un.nl, T);
        for (int64_t t = 0; t < T; ++t) {
          const V zv = vload(zz + t * W), sig = vsigmoid(zv);
          vstore(zs + t * W, sig);
          vstore(dy + t * W, vload(go + t * W) * zv * sig);
        }
      } else {
        for (int64_t i = 0; i < T * W; ++i) dy[i] = go[i];
      }
      // The states of the chunk, from the state saved after the previous chunk.
      if (k > 0) {
        load_tile(H, a.states + ((b * s.dim + un.c0) * s.n_chunks + k - 1) * N, s.n_chunks * N,
                  un.nl, N);
      } else {
        for (int64_t i = 0; i < N * W; ++i) H[i] = 0.0f;
      }
      // The unit's next rows: the next vector's in this chunk, else the first's in the chunk
      // before.
      const bool last = vi + 1 == nv;
      const Unit next = vector_unit(s, bg, last ? v0 : v0 + vi + 1);
      const int64_t next_t0 = last ? t0 - K : t0;
      const float *batch_rows = a.u + b * s.dim * L, *dout_rows = a.dout + b * s.dim * L;
      const float *z_rows = a.z != nullptr ? a.z + b * s.dim * L : nullptr;
      auto prefetch_next = [&](int64_t t) __attribute__((always_inline)) {
        if (next_t0 < 0) return;
        prefetch_line(batch_rows, 1, s, next, t, next_t0);
        prefetch_line(dout_rows, 1, s, next, t, next_t0);
        prefetch_line(delta_rows, s.ratio, s, next, t, next_t0);
        prefetch_line(z_rows, 1, s, next, t, next_t0);
      };
      if (NS > 0) {
        // N known at compile time: the states stay in registers (and are stored for the
        // adjoint).
        V hr[NS > 0 ? NS : 1];
        for (int64_t n = 0; n < NS; ++n) hr[n] = vload(H + n * W);
        for (int64_t t = 0; t < T; ++t) {
          prefetch_next(t);
          vstore(yy + t * W, scan_token_regs<NS>(hr, vload(dt + t * W), vload(uu + t * W), Dv,
                                                 A2v, Bg + t0 + t, Cg + t0 + t, L,
                                                 H + (t + 1) * N * W, decay + t * N * W));
        }
      } else {
        for (int64_t t = 0; t < T; ++t) {
          prefetch_next(t);
          vstore(yy + t * W, scan_token(N, vload(dt + t * W), vload(uu + t * W), Dv, A2v,
                                        H + t * N * W, H + (t + 1) * N * W, decay + t * N * W,
                                        Bg + t0 + t, Cg + t0 + t, L));
        }
      }
      // The adjoint lam[t] = C[t] dy[t] + decay[t + 1] lam[t + 1], carried as decay * lam (in
      // registers when N is known at compile time).
      V dDv = V{}, dbv = V{};
      V carry_regs[NS > 0 ? NS : 1];
      for (int64_t n = 0; n < NS; ++n) carry_regs[n] = vload(carry + n * W);
      for (int64_t t = T - 1; t >= 0; --t) {
        const V dtv = vload(dt + t * W), uv = vload(uu + t * W), dyv = vload(dy + t * W);
        const V du = dtv * uv;
        const float *Bt = Bg + t0 + t, *Ct = Cg + t0 + t;
        const float *hp = H + t * N * W, *hn = hp + N * W, *dc = decay + t * N * W;
        float *dBt = dBacc + t * N * W, *dCt = dCacc + t * N * W;
        // One state: the carry of state n advances; adds lam B to lamB and lam A decay h[t-1]
        // to ddA.
        auto state = [&](int64_t n, V &carry_n, V &lamB, V &ddA) __attribute__((always_inline)) {
          const V an = vload(dc + n * W);
          const V lm = carry_n + dyv * Ct[n * L];
          vstore(dCt + n * W, vload(dCt + n * W) + dyv * vload(hn + n * W));
          vstore(dBt + n * W, vload(dBt + n * W) + lm * du);
          lamB += lm * Bt[n * L];
          const V la = lm * (an * vload(hp + n * W));
          ddA += la * vload(Av + n * W);
          vstore(dAv + n * W, vload(dAv + n * W) + la * dtv);
          carry_n = an * lm;
        };
        V lamB0 = V{}, lamB1 = V{}, ddA0 = V{}, ddA1 = V{};
        if (NS > 0) {
#pragma GCC unroll 64
          for (int n = 0; n < NS; ++n) {
            if (n % 2 == 0) {
              state(n, carry_regs[n], lamB0, ddA0);
            } else {
              state(n, carry_regs[n], lamB1, ddA1);
            }
          }
        } else {
          auto state_mem = [&](int64_t n, V &lamB, V &ddA) __attribute__((always_inline)) {
            V carry_n = vload(carry + n * W);
            state(n, carry_n, lamB, ddA);
            vstore(carry + n * W, carry_n);
          };
          for (int64_t q = 0; q < N / 2; ++q) {
            state_mem(2 * q, lamB0, ddA0);
            state_mem(2 * q + 1, lamB1, ddA1);
          }
          if (N % 2 != 0) state_mem(N - 1, lamB0, ddA0);
        }
        const V lamBv = lamB0 + lamB1;
        V ddtv = (ddA0 + ddA1) + uv * lamBv;
        if (a.softplus) ddtv *= vload(sg + t * W);
        dbv += ddtv;
        dDv += dyv * uv;
        vstore(ddt + t * W, ddtv);
        vstore(dut + t * W, dtv * lamBv + Dv * dyv);
        if (a.z != nullptr) {
          const V zv = vload(zz + t * W), sig = vload(zs + t * W);
          // d/dz [y z sigmoid(z)] = y sigmoid(z) (1 + z (1 - sigmoid(z)))
          vstore(zz + t * W, vload(go + t * W) * vload(yy + t * W) * sig * (1.0f + zv * (1.0f - sig)));
        }
      }
      for (int64_t n = 0; n < NS; ++n) vstore(carry + n * W, carry_regs[n]);
      vstore(dDw + vi * W, vload(dDw + vi * W) + dDv);
      vstore(dbw + vi * W, vload(dbw + vi * W) + dbv);
      for (int64_t i = 0; i < N * W; i += W)
        vstore(dA + vi * N * W + i, vload(dA + vi * N * W + i) + vload(dAc + i));
      store_tile(a.du + row + t0, L, dut, un.nl, T, a.stream_out);
      store_tile(a.ddelta_ch + row + t0, L, ddt, un.nl, T, a.stream_out);
      if (a.z != nullptr) store_tile(a.dz + row + t0, L, zz, un.nl, T, a.stream_out);
    }
    // dB, dC of the chunk summed over the unit's channels.
    float *dBg = a.dB_part + ((sub * s.batch + b) * s.groups + g) * N * L + t0;
    float *dCg = a.dC_part + ((sub * s.batch + b) * s.groups + g) * N * L + t0;
    for (int64_t n = 0; n < N; ++n) {
      int64_t t = 0;
      for (; t + W <= T; t += W) {
        reduce_lanes(dBacc + (t * N + n) * W, N * W, dBg + n * L + t);
        reduce_lanes(dCacc + (t * N + n) * W, N * W, dCg + n * L + t);
      }
      for (; t < T; ++t) {
        dBg[n * L + t] = hsum(vload(dBacc + (t * N + n) * W));
        dCg[n * L + t] = hsum(vload(dCacc + (t * N + n) * W));
      }
    }
  }
  for (int64_t vi = 0; vi < nv; ++vi) {
    const Unit un = vector_unit(s, bg, v0 + vi);
    for (int l = 0; l < un.nl; ++l) {
      const int64_t c = b * s.dim + un.c0 + l;
      for (int64_t n = 0; n < N; ++n) a.dA_part[c * N + n] = dA[(vi * N + n) * W + l];
      a.dD_part[c] = dDw[vi * W + l];
      a.dbias_part[c] = dbw[vi * W + l];
    }
  }
#if defined(VSSM_AVX512)
  _mm_sfence();  // the streaming stores are visible to other threads after this
#endif
}

void bwd_unit(const BwdArgs &a, int64_t unit, float *scratch) {
  switch (a.s.dstate) {
    case 1: return bwd_unit_impl<1>(a, unit, scratch);
    case 16: return bwd_unit_impl<16>(a, unit, scratch);
    default: return bwd_unit_impl<0>(a, unit, scratch);
  }
}


// LayerNorm over the C channels of n pixels of a channels-first (C, pixels) map, then the
// optional SiLU gate: out[c, j] = ((x[c, j] - mean_j) * rstd_j * w[c] + b[c]) * z[c, j] *
// sigmoid(z[c, j]), the biased variance as torch's layer_norm. Vectors run along the pixels, so
// no transposition is needed: three passes over the (C, n) block (mean, variance, output), which
// stays in the caches (n <= kNormPixels). n is a multiple of W; x, z and out rows are their
// strides apart; w, b and z may be nullptr.
void norm_gate_channels(const float *x, int64_t x_stride, int64_t C, int64_t n, const float *w,
                        const float *b, float eps, const float *z, int64_t z_stride, float *out,
                        int64_t out_stride) {
  constexpr int64_t kMaxVectors = kNormPixels / W;
  const int64_t nv = n / W;
  V mean[kMaxVectors], rstd[kMaxVectors];
  for (int64_t v = 0; v < nv; ++v) mean[v] = V{};
  for (int64_t c = 0; c < C; ++c)
    for (int64_t v = 0; v < nv; ++v) mean[v] += vload(x + c * x_stride + v * W);
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t v = 0; v < nv; ++v) {
    mean[v] = mean[v] * inv_c;
    rstd[v] = V{};
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t v = 0; v < nv; ++v) {
      const V d = vload(x + c * x_stride + v * W) - mean[v];
      rstd[v] += d * d;
    }
  for (int64_t v = 0; v < nv; ++v) {
    float lanes[W];
    vstore(lanes, rstd[v] * inv_c + eps);
    for (int l = 0; l < W; ++l) lanes[l] = 1.0f / __builtin_sqrtf(lanes[l]);
    rstd[v] = vload(lanes);
  }
  for (int64_t c = 0; c < C; ++c) {
    const V wc = vset(w != nullptr ? w[c] : 1.0f), bc = vset(b != nullptr ? b[c] : 0.0f);
    const float *xr = x + c * x_stride;
    float *outr = out + c * out_stride;
    if (z != nullptr) {
      const float *zr = z + c * z_stride;
      for (int64_t v = 0; v < nv; ++v) {
        const V zv = vload(zr + v * W);
        const V y = (vload(xr + v * W) - mean[v]) * rstd[v] * wc + bc;
        vstore(outr + v * W, (y * zv) / (1.0f + vexp(-zv)));  // y silu(z), one division
      }
    } else {
      for (int64_t v = 0; v < nv; ++v)
        vstore(outr + v * W, (vload(xr + v * W) - mean[v]) * rstd[v] * wc + bc);
    }
  }
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (x86: 8 x 8 register
// transposes, the edges one by one): a channel-last block of pixels to channels-first rows.
void transpose_block(const float *src, int64_t src_stride, int64_t rows, int64_t cols, float *dst,
                     int64_t dst_stride) {
  int64_t r0 = 0;
#if defined(VSSM_AVX2) || defined(VSSM_AVX512)
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      __m256 v[8];
      for (int k = 0; k < 8; ++k) v[k] = _mm256_loadu_ps(src + (r0 + k) * src_stride + c0);
      transpose8(v);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(dst + (c0 + k) * dst_stride + r0, v[k]);
    }
    for (; c0 < cols; ++c0)
      for (int64_t r = r0; r < r0 + 8; ++r) dst[c0 * dst_stride + r] = src[r * src_stride + c0];
  }
#endif
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
}

// The depthwise convolution (k x k, odd k, stride 1, zero padding k / 2) of a channel-last
// H x Wd map x of C channels at n pixels (row-major indices pix[j], -1 for a zero row), plus
// bias, through SiLU: out[j * out_stride + c] for c < C. w holds the taps channel-innermost,
// w[(dy * k + dx) * C + c]; bias may be nullptr. (conv_scan_cpu.cpp: the scan-order gather of
// EfficientVMamba's mixer fused with its convolution and SiLU.)
//
// NB vectors of channels at a time, each with its own chain of multiply-adds (one chain waited
// on the multiply-add latency), over all n pixels; for k = 3 the block's taps stay in
// registers (the taps of every channel are 54 vectors at C = 96, which were loaded again for
// every pixel).
template <int NB, int K>
VSSM_INLINE void dwconv_silu_block(const float *x, int64_t H, int64_t Wd, int64_t C,
                                   const float *w, const float *bias, int64_t k,
                                   const int64_t *pix, int64_t n, int64_t c, float *out,
                                   int64_t out_stride) {
  constexpr int KK = K > 0 ? K * K : 1;
  V taps[KK][NB], b[NB];
  for (int i = 0; i < NB; ++i) b[i] = bias != nullptr ? vload(bias + c + i * W) : V{};
  if (K > 0)
    for (int t = 0; t < KK; ++t)
      for (int i = 0; i < NB; ++i) taps[t][i] = vload(w + t * C + c + i * W);
  const int64_t r = k / 2;
  for (int64_t j = 0; j < n; ++j) {
    float *o = out + j * out_stride + c;
    const int64_t p = pix[j];
    if (p < 0) {
      for (int i = 0; i < NB; ++i) vstore(o + i * W, V{});
      continue;
    }
    const int64_t py = p / Wd, px = p % Wd;
    const int64_t tap0 = ((py - r) * Wd + (px - r)) * C + c;  // tap (0, 0), maybe outside
    V acc[NB];
    for (int i = 0; i < NB; ++i) acc[i] = b[i];
    if (K > 0 && py >= r && py + r < H && px >= r && px + r < Wd) {
      for (int dy = 0; dy < (K > 0 ? K : 1); ++dy)
        for (int dx = 0; dx < (K > 0 ? K : 1); ++dx) {
          const float *xt = x + tap0 + (dy * Wd + dx) * C;
          for (int i = 0; i < NB; ++i) acc[i] += taps[dy * K + dx][i] * vload(xt + i * W);
        }
    } else {
      // The taps that land inside the map.
      const int64_t dy0 = py < r ? r - py : 0, dy1 = py + r >= H ? H - py + r : k;
      const int64_t dx0 = px < r ? r - px : 0, dx1 = px + r >= Wd ? Wd - px + r : k;
      for (int64_t dy = dy0; dy < dy1; ++dy)
        for (int64_t dx = dx0; dx < dx1; ++dx) {
          const float *xt = x + tap0 + (dy * Wd + dx) * C, *wt = w + (dy * k + dx) * C + c;
          for (int i = 0; i < NB; ++i) acc[i] += vload(wt + i * W) * vload(xt + i * W);
        }
    }
    for (int i = 0; i < NB; ++i) vstore(o + i * W, acc[i] * vsigmoid(acc[i]));
  }
}

void dwconv_silu_pixels(const float *x, int64_t H, int64_t Wd, int64_t C, const float *w,
                        const float *bias, int64_t k, const int64_t *pix, int64_t n, float *out,
                        int64_t out_stride) {
  // Two vectors at a time where there are 32 vector registers (18 of them hold the taps).
  constexpr int NB = W >= 16 ? 2 : 1;
  const int64_t full = C - C % W;
  int64_t c = 0;
  if (k == 3) {
    for (; c + NB * W <= full; c += NB * W)
      dwconv_silu_block<NB, 3>(x, H, Wd, C, w, bias, k, pix, n, c, out, out_stride);
    for (; c < full; c += W)
      dwconv_silu_block<1, 3>(x, H, Wd, C, w, bias, k, pix, n, c, out, out_stride);
  } else {
    for (; c + NB * W <= full; c += NB * W)
      dwconv_silu_block<NB, 0>(x, H, Wd, C, w, bias, k, pix, n, c, out, out_stride);
    for (; c < full; c += W)
      dwconv_silu_block<1, 0>(x, H, Wd, C, w, bias, k, pix, n, c, out, out_stride);
  }
  if (c == C) return;
  const int64_t r = k / 2;
  for (int64_t j = 0; j < n; ++j) {
    float *o = out + j * out_stride;
    const int64_t p = pix[j];
    if (p < 0) {
      for (int64_t cc = c; cc < C; ++cc) o[cc] = 0.0f;
      continue;
    }
    const int64_t py = p / Wd, px = p % Wd;
    const int64_t dy0 = py < r ? r - py : 0, dy1 = py + r >= H ? H - py + r : k;
    const int64_t dx0 = px < r ? r - px : 0, dx1 = px + r >= Wd ? Wd - px + r : k;
    const int64_t tap0 = ((py - r) * Wd + (px - r)) * C;
    for (int64_t cc = c; cc < C; ++cc) {
      float acc = bias != nullptr ? bias[cc] : 0.0f;
      for (int64_t dy = dy0; dy < dy1; ++dy)
        for (int64_t dx = dx0; dx < dx1; ++dx)
          acc += w[(dy * k + dx) * C + cc] * x[tap0 + (dy * Wd + dx) * C + cc];
      o[cc] = acc / (1.0f + __builtin_expf(-acc));
    }
  }
}

// acc[c] += sum over `rows` contiguous rows of C values of (x[r, c] - mean_r) * rstd_r: the
// LayerNorm of each row without its affine part, summed (the channel attentions' mean token,
// norm_gate_cpu.cpp). Two passes over each row for mean and variance, as norm_gate_channels.
void norm_sum_rows(const float *x, int64_t rows, int64_t C, float eps, float *acc) {
  const int64_t full = C - C % W, tail = C - full;
  VI tail_mask;
  for (int l = 0; l < W; ++l) tail_mask[l] = l < tail ? -1 : 0;
  const float inv_c = 1.0f / static_cast<float>(C);
  float xt[W] = {}, at[W] = {};
  for (int64_t c = 0; c < tail; ++c) at[c] = acc[full + c];
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * C;
    for (int64_t c = 0; c < tail; ++c) xt[c] = xr[full + c];
    V sum = V{};
    for (int64_t c = 0; c < full; c += W) sum += vload(xr + c);
    if (tail) sum += vload(xt);
    const V mean = vset(hsum(sum) * inv_c);
    V sq = V{};
    for (int64_t c = 0; c < full; c += W) {
      const V d = vload(xr + c) - mean;
      sq += d * d;
    }
    if (tail) {
      const V d = vselect(tail_mask, vload(xt) - mean, V{});
      sq += d * d;
    }
    const V rstd = vset(1.0f / __builtin_sqrtf(hsum(sq) * inv_c + eps));
    for (int64_t c = 0; c < full; c += W)
      vstore(acc + c, vload(acc + c) + (vload(xr + c) - mean) * rstd);
    if (tail) vstore(at, vload(at) + (vload(xt) - mean) * rstd);
  }
  for (int64_t c = 0; c < tail; ++c) acc[full + c] = at[c];
}

#if defined(VSSM_ROW_KERNELS)
#include "scan_kernel_rows.h"
#endif

}  // namespace

const Kernels *kernels() {
#if defined(VSSM_ROW_KERNELS)
  static const Kernels k{VSSM_ISA_NAME, W,       fwd_scratch,     bwd_scratch, fwd_unit,
                         bwd_unit,      fwd_row_scratch, bwd_row_scratch, fwd_row,  bwd_row,
                         norm_gate_channels, norm_sum_rows, transpose_block,
                         dwconv_silu_pixels};
#else
  static const Kernels k{VSSM_ISA_NAME, W,       fwd_scratch, bwd_scratch, fwd_unit,
                         bwd_unit,      nullptr, nullptr,     nullptr,     nullptr,
                         norm_gate_channels, norm_sum_rows, transpose_block,
                         dwconv_silu_pixels};
#endif
  return &k;
}

}  // namespace VSSM_ISA
}  // namespace vssm_cpu
