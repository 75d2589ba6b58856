// Instantiates the propagation kernels for __nv_bfloat16.
#include "propagate_kernel.cuh"

namespace cgspn {

void launch_propagate_fwd_bf16(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_fwd_typed<__nv_bfloat16>(params, shape, stream);
}

void launch_propagate_bwd_bf16(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_bwd_typed<__nv_bfloat16>(params, shape, stream);
}

void launch_merge_directions_bf16(const float* partials, void* out, int64_t numel, cudaStream_t stream) {
  launch_merge_typed<__nv_bfloat16>(partials, out, numel, stream);
}

}  // namespace cgspn
