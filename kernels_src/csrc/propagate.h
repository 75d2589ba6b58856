// C-GSPN propagation (SPEC §3): parameters and launchers shared by the .cu files and the API.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace cgspn {

constexpr int kDirections = 4;
constexpr int kFields = 5;  // lambda, u, wt_prev, wt_self, wt_next
constexpr float kWeightEps = 1e-6f;
constexpr int kForwardInputs = 6;   // z, lambda, u, wt_prev, wt_self, wt_next
constexpr int kBackwardInputs = 7;  // z, dy, lambda, u, wt_prev, wt_self, wt_next
constexpr int kMaxStages = 4;       // lines of inputs in flight (cp.async ring) at most

// All tensors contiguous. z, dy: (B, H, W, C); g, dg: (B, H, W, 20*C) in the input dtype;
// partial, dz_partial: (4, B*H*W*C) float32; states: (4, B, H*W, C) float32, line-major per
// direction (line t, position p), or null when the forward does not keep them.
struct PropagateParams {
  const void* z = nullptr;
  const void* g = nullptr;
  const void* dy = nullptr;
  const float* states_in = nullptr;
  float* states_out = nullptr;
  float* partial = nullptr;
  void* dg = nullptr;
  int batch = 0;
  int height = 0;
  int width = 0;
  int channels = 0;
  int64_t numel = 0;  // B*H*W*C
};

// Launch geometry chosen by the host: block (lanes, position threads), PPT positions a thread.
struct LaunchShape {
  int vec = 1;       // channels a thread (16-byte loads when the dtype and C allow)
  int lanes = 1;     // threads along channels
  int threads_p = 1; // threads along the line
  int ppt = 1;       // positions a thread (template: 1, 2, 4 or 8)
  int stages = 0;    // lines of inputs streamed ahead into shared memory (cp.async); 0: loaded when needed
};

// Shared memory of the line exchange: `line_arrays` float32 arrays (forward 1, backward 2) of two line slots.
inline size_t exchange_bytes(const LaunchShape& shape, int line_arrays) {
  return static_cast<size_t>(2) * line_arrays * shape.threads_p * shape.ppt * shape.lanes * shape.vec * sizeof(float);
}

// Shared memory of the input ring: `inputs` chunks of `vec` values a thread, position slot and stage.
inline size_t ring_bytes(const LaunchShape& shape, int inputs, int elem_bytes) {
  return static_cast<size_t>(shape.stages) * shape.lanes * shape.threads_p * shape.ppt * inputs * shape.vec *
         elem_bytes;
}

// Threads a block for vectors of `vec_bytes` (matches max_threads<T, VEC>() of the kernels).
inline int block_thread_limit(int vec_bytes) { return vec_bytes >= 16 ? 512 : 1024; }

enum class DType { kFloat32, kBFloat16, kFloat16 };

void launch_propagate_fwd(const PropagateParams& params, const LaunchShape& shape, DType dtype, cudaStream_t stream);
void launch_propagate_bwd(const PropagateParams& params, const LaunchShape& shape, DType dtype, cudaStream_t stream);
// out (numel, dtype) = (p0 + p1) + (p2 + p3) for partials (4, numel) float32
void launch_merge_directions(const float* partials, void* out, int64_t numel, DType dtype, cudaStream_t stream);

}  // namespace cgspn
