// Launchers of the forward kernel: one instantiation per (input dtype, output dtype, launch
// shape); the launch shape follows the chunk length (scan_chunk_length).
#include <stdexcept>
#include <string>

#include "selective_scan_fwd_kernel.cuh"

namespace vssm_mm {

void launch_selective_scan_fwd(const ScanFwdParams &p, ScanDtype input_dtype, bool out_float32,
                               void *stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const dim3 grid(static_cast<unsigned>(p.shape.dim), static_cast<unsigned>(p.shape.batch));
  const size_t smem = p.shape.dstate * sizeof(float);
  for_dtypes(input_dtype, out_float32, [&]<typename in_t, typename out_t>() {
    for_launch_shape<false>(p.shape.length, [&]<int kThreads, int kItems>() {
      selective_scan_fwd_kernel<kThreads, kItems, in_t, out_t><<<grid, kThreads, smem, stream>>>(p);
    });
  });
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("selective_scan_fwd launch failed: ") +
                             cudaGetErrorString(err));
}

}  // namespace vssm_mm
