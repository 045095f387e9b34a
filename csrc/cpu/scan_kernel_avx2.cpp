// The kernels compiled for AVX2 + FMA (x86-64 with GCC or Clang); chosen at run time.
#include "scan_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define VSSM_ISA avx2
#define VSSM_ISA_NAME "avx2"
#define VSSM_LANES 8
#define VSSM_ROW_KERNELS 1
#define VSSM_AVX2 1
#include "scan_kernel.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif

namespace vssm_cpu {
const Kernels *kernels_avx2() { return avx2::kernels(); }
}  // namespace vssm_cpu
#else
namespace vssm_cpu {
const Kernels *kernels_avx2() { return nullptr; }
}  // namespace vssm_cpu
#endif
