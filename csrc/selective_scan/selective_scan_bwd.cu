// Launchers of the backward kernel: one instantiation per (input dtype, output dtype,
// launch shape); the launch shape follows the chunk length (scan_chunk_length).
#include <stdexcept>
#include <string>

#include "selective_scan_bwd_kernel.cuh"

namespace vssm_mm {
namespace {

template <int kThreads, int kItems, typename in_t, typename dout_t>
void launch(const ScanBwdParams &p, cudaStream_t stream) {
  if (scan_chunk_length(p.shape.length) != kThreads * kItems)
    throw std::logic_error("selective_scan_bwd: chunk plan mismatch");
  const dim3 grid(static_cast<unsigned>(p.shape.dim), static_cast<unsigned>(p.shape.batch));
  const size_t smem = 2 * p.shape.dstate * sizeof(float);
  selective_scan_bwd_kernel<kThreads, kItems, in_t, dout_t><<<grid, kThreads, smem, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("selective_scan_bwd launch failed: ") +
                             cudaGetErrorString(err));
}

template <typename in_t, typename dout_t>
void launch_for_length(const ScanBwdParams &p, cudaStream_t stream) {
  for_launch_shape<true>(p.shape.length, [&]<int kThreads, int kItems>() {
    launch<kThreads, kItems, in_t, dout_t>(p, stream);
  });
}

}  // namespace

void launch_selective_scan_bwd(const ScanBwdParams &params, ScanDtype input_dtype,
                               bool dout_float32, void *stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  switch (input_dtype) {
    case ScanDtype::kFloat32:
      launch_for_length<float, float>(params, stream);
      break;
    case ScanDtype::kFloat16:
      if (dout_float32)
        launch_for_length<__half, float>(params, stream);
      else
        launch_for_length<__half, __half>(params, stream);
      break;
    case ScanDtype::kBFloat16:
      if (dout_float32)
        launch_for_length<__nv_bfloat16, float>(params, stream);
      else
        launch_for_length<__nv_bfloat16, __nv_bfloat16>(params, stream);
      break;
  }
}

}  // namespace vssm_mm
