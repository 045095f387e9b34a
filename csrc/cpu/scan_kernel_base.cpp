// The kernels for any CPU: vector extensions lowered to the compiler's baseline instruction set.
#define VSSM_ISA base
#define VSSM_ISA_NAME "base"
#define VSSM_LANES 8
#define VSSM_ROW_KERNELS 1
#include "scan_kernel.h"

namespace vssm_cpu {
const Kernels *kernels_base() { return base::kernels(); }
}  // namespace vssm_cpu
