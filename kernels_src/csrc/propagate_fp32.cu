// Instantiates the propagation kernels for float.
#include "propagate_kernel.cuh"

namespace cgspn {

void launch_propagate_fwd_fp32(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_fwd_typed<float>(params, shape, stream);
}

void launch_propagate_bwd_fp32(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_bwd_typed<float>(params, shape, stream);
}

void launch_merge_directions_fp32(const float* partials, void* out, int64_t numel, cudaStream_t stream) {
  launch_merge_typed<float>(partials, out, numel, stream);
}

}  // namespace cgspn
