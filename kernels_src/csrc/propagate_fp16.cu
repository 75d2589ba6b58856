// Instantiates the propagation kernels for __half.
#include "propagate_kernel.cuh"

namespace cgspn {

void launch_propagate_fwd_fp16(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_fwd_typed<__half>(params, shape, stream);
}

void launch_propagate_bwd_fp16(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_bwd_typed<__half>(params, shape, stream);
}

void launch_merge_directions_fp16(const float* partials, void* out, int64_t numel, cudaStream_t stream) {
  launch_merge_typed<__half>(partials, out, numel, stream);
}

}  // namespace cgspn
