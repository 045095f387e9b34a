// The kernels compiled for AVX-512 (F, VL, BW, DQ) (x86-64 with GCC or Clang); chosen at run time.
#include "scan_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
// (_mm512_roundscale_ps leaves its unused pass-through operand undefined on purpose)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define VSSM_ISA avx512
#define VSSM_ISA_NAME "avx512"
#define VSSM_LANES 16
#define VSSM_AVX512 1
#include "scan_kernel.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif

namespace vssm_cpu {
const Kernels *kernels_avx512() { return avx512::kernels(); }
}  // namespace vssm_cpu
#else
namespace vssm_cpu {
const Kernels *kernels_avx512() { return nullptr; }
}  // namespace vssm_cpu
#endif
