// Host side of the C-GSPN propagation ops: checks, allocation, launch shape and dispatch.
#include "propagate_api.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "propagate.h"

namespace cgspn {

void launch_propagate_fwd_fp32(const PropagateParams&, const LaunchShape&, cudaStream_t);
void launch_propagate_fwd_bf16(const PropagateParams&, const LaunchShape&, cudaStream_t);
void launch_propagate_fwd_fp16(const PropagateParams&, const LaunchShape&, cudaStream_t);
void launch_propagate_bwd_fp32(const PropagateParams&, const LaunchShape&, cudaStream_t);
void launch_propagate_bwd_bf16(const PropagateParams&, const LaunchShape&, cudaStream_t);
void launch_propagate_bwd_fp16(const PropagateParams&, const LaunchShape&, cudaStream_t);
void launch_merge_directions_fp32(const float*, void*, int64_t, cudaStream_t);
void launch_merge_directions_bf16(const float*, void*, int64_t, cudaStream_t);
void launch_merge_directions_fp16(const float*, void*, int64_t, cudaStream_t);

namespace {

#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", (x).sizes())

constexpr int kDefaultStages = 2;  // lines of inputs streamed ahead unless CGSPN_CUDA_STAGES says otherwise

// Launch-shape overrides for benchmarking (unset: the defaults below).
int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value == nullptr || *value == '\0' ? fallback : std::atoi(value);
}

int next_pow2(int x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

// Position threads and positions a thread (PPT) for the shape's lanes: the fewest PPT the block allows.
void fit_line(LaunchShape& shape, int len, int max_threads) {
  shape.ppt = 1;
  while (shape.ppt < 8 && ((len + shape.ppt - 1) / shape.ppt) * shape.lanes > max_threads) shape.ppt *= 2;
  const int threads_p = (len + shape.ppt - 1) / shape.ppt;
  const int threads = ((threads_p * shape.lanes + 31) / 32) * 32;
  shape.threads_p = threads / shape.lanes;
}

// A block scans one (channel block, direction, batch): whole 64-channel rows when the grid
// fills the GPU (a warp then reads whole 128-byte lines, five consecutive lines a position:
// DRAM-friendly), halved down to one thread's vector while there are fewer blocks than half the SMs
// (small batches are bound by each SM's scan arithmetic, not by DRAM: at 2058 px, B=1, 8-channel
// blocks ran the forward in 279 us against 335 us with 16 on the H100).
// The line is spread over the block's position threads, PPT positions a thread; long lines get
// fewer channels a block until the line exchange fits shared memory. cgspn/propagation.py's
// cuda_max_line_length() states the lines this always fits (the dispatch hands longer ones on).
LaunchShape choose_shape(int batch, int height, int width, int channels, at::ScalarType dtype, int line_arrays,
                         int max_block_channels = 64) {
  const int elem = static_cast<int>(c10::elementSize(dtype));
  const int full_vec = 16 / elem;
  LaunchShape shape;
  const int vec_divisor = std::max(1, env_int("CGSPN_CUDA_VEC_DIVISOR", 1));  // 2: 8-byte loads; >= full_vec: scalars
  shape.vec = std::max(1, full_vec / vec_divisor);
  TORCH_CHECK(shape.vec == full_vec || shape.vec == full_vec / 2 || shape.vec == 1,
              "propagate: CGSPN_CUDA_VEC_DIVISOR=", vec_divisor, " gives vectors of ", shape.vec, " ", dtype,
              " values; the kernels are built for ", full_vec, ", ", full_vec / 2, " or 1");
  if (channels % shape.vec != 0) shape.vec = 1;  // vec divides full_vec: C is no multiple of a wider vector either
  const auto* device = at::cuda::getCurrentDeviceProperties();
  const int min_block_channels = shape.vec;
  int block_channels = std::max(min_block_channels, std::min(next_pow2(channels), max_block_channels));
  while (block_channels > min_block_channels &&
         static_cast<int64_t>(batch) * kDirections * ((channels + block_channels - 1) / block_channels) <
             device->multiProcessorCount / 2)
    block_channels /= 2;
  block_channels = std::max(shape.vec, std::min(env_int("CGSPN_CUDA_BLOCK_CHANNELS", block_channels), max_block_channels));
  shape.lanes = std::min(32, std::max(1, block_channels / shape.vec));
  const int len = std::max(height, width);
  const int max_threads = block_thread_limit(shape.vec * elem);
  while (shape.lanes > 1 && ((len + 7) / 8) * shape.lanes > max_threads) shape.lanes /= 2;  // very long lines
  fit_line(shape, len, max_threads);
  const size_t shared_memory = device->sharedMemPerBlockOptin;
  while (shape.lanes > 1 && exchange_bytes(shape, line_arrays) > shared_memory) {
    shape.lanes /= 2;
    fit_line(shape, len, max_threads);
  }
  TORCH_CHECK(shape.lanes * shape.threads_p <= max_threads && exchange_bytes(shape, line_arrays) <= shared_memory,
              "propagate: lines of ", len, " positions (", dtype, line_arrays > 1 ? ", backward" : ", forward",
              ") exceed the CUDA kernel's limits on this device (", exchange_bytes(shape, line_arrays),
              " bytes of shared memory a block, ", shared_memory,
              " available); cgspn.propagation.propagate() hands such inputs to the 'triton' backend");
  return shape;
}

// Lines of inputs the scan streams ahead (CGSPN_CUDA_STAGES, default kDefaultStages): as many as the
// block's shared memory holds beside its line exchange, none for vectors under 8 bytes (cp.async).
int requested_stages() { return std::clamp(env_int("CGSPN_CUDA_STAGES", kDefaultStages), 0, kMaxStages); }

void fit_stages(LaunchShape& shape, int line_arrays, int elem_bytes) {
  const int inputs = line_arrays > 1 ? kBackwardInputs : kForwardInputs;
  const size_t shared_memory = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  shape.stages = shape.vec * elem_bytes >= 8 ? requested_stages() : 0;
  while (shape.stages > 0 && exchange_bytes(shape, line_arrays) + ring_bytes(shape, inputs, elem_bytes) > shared_memory)
    --shape.stages;
}

// Forward launch shape with its input ring.
LaunchShape choose_fwd_shape(int batch, int height, int width, int channels, at::ScalarType dtype) {
  LaunchShape shape = choose_shape(batch, height, width, channels, dtype, 1);
  fit_stages(shape, 1, static_cast<int>(c10::elementSize(dtype)));
  return shape;
}

// Backward launch shape: an input ring of at least one line when narrower channel blocks make it fit.
LaunchShape choose_bwd_shape(int batch, int height, int width, int channels, at::ScalarType dtype) {
  const int elem = static_cast<int>(c10::elementSize(dtype));
  LaunchShape shape = choose_shape(batch, height, width, channels, dtype, 2);
  fit_stages(shape, 2, elem);
  const bool wants_ring = requested_stages() > 0 && shape.vec * elem >= 8;  // vec does not depend on the cap
  for (int cap = shape.lanes * shape.vec; wants_ring && shape.stages == 0 && cap > 16;) {
    cap /= 2;
    shape = choose_shape(batch, height, width, channels, dtype, 2, cap);
    fit_stages(shape, 2, elem);
  }
  return shape;
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, "propagate: dtype must be float32, bfloat16 or float16, got ", t);
  }
  return DType::kFloat32;
}

void check_inputs(const at::Tensor& z, const at::Tensor& g) {
  TORCH_CHECK(z.is_cuda() && g.is_cuda(), "propagate: Z and G must be CUDA tensors");
  TORCH_CHECK(z.dim() == 4, "propagate: Z must be (B, H, W, Cc), got ", z.sizes());
  TORCH_CHECK(z.scalar_type() == g.scalar_type(), "propagate: Z and G must share a dtype");
  TORCH_CHECK(z.device() == g.device(), "propagate: Z and G must be on one device");
  const auto B = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3);
  CHECK_SHAPE(g, B, H, W, 20 * C);
  TORCH_CHECK(B > 0 && H > 0 && W > 0 && C > 0, "propagate: empty input ", z.sizes());
  TORCH_CHECK(B <= 65535, "propagate: batch must be at most 65535");
}

}  // namespace

void launch_propagate_fwd(const PropagateParams& p, const LaunchShape& s, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: launch_propagate_fwd_fp32(p, s, stream); break;
    case DType::kBFloat16: launch_propagate_fwd_bf16(p, s, stream); break;
    case DType::kFloat16: launch_propagate_fwd_fp16(p, s, stream); break;
  }
}

void launch_propagate_bwd(const PropagateParams& p, const LaunchShape& s, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: launch_propagate_bwd_fp32(p, s, stream); break;
    case DType::kBFloat16: launch_propagate_bwd_bf16(p, s, stream); break;
    case DType::kFloat16: launch_propagate_bwd_fp16(p, s, stream); break;
  }
}

void launch_merge_directions(const float* partials, void* out, int64_t numel, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: launch_merge_directions_fp32(partials, out, numel, stream); break;
    case DType::kBFloat16: launch_merge_directions_bf16(partials, out, numel, stream); break;
    case DType::kFloat16: launch_merge_directions_fp16(partials, out, numel, stream); break;
  }
}

std::tuple<at::Tensor, at::Tensor> propagate_fwd(const at::Tensor& z_in, const at::Tensor& g_in, bool save_states) {
  check_inputs(z_in, g_in);
  const at::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  const at::Tensor g = g_in.contiguous();
  const int B = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3);
  const DType dtype = to_dtype(z.scalar_type());
  const auto f32 = z.options().dtype(at::kFloat);
  at::Tensor partial = at::empty({kDirections, B, H, W, C}, f32);
  at::Tensor states = save_states ? at::empty({kDirections, B, H * W, C}, f32) : at::empty({0}, f32);
  at::Tensor y = at::empty_like(z);

  PropagateParams p;
  p.z = z.data_ptr();
  p.g = g.data_ptr();
  p.partial = partial.data_ptr<float>();
  p.states_out = save_states ? states.data_ptr<float>() : nullptr;
  p.batch = B;
  p.height = H;
  p.width = W;
  p.channels = C;
  p.numel = z.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_propagate_fwd(p, choose_fwd_shape(B, H, W, C, z.scalar_type()), dtype, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_merge_directions(partial.data_ptr<float>(), y.data_ptr(), p.numel, dtype, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, states};
}

std::tuple<at::Tensor, at::Tensor> propagate_bwd(const at::Tensor& dy_in, const at::Tensor& z_in,
                                                 const at::Tensor& g_in, const at::Tensor& states_in) {
  check_inputs(z_in, g_in);
  TORCH_CHECK(dy_in.sizes() == z_in.sizes(), "propagate_bwd: dY must have the shape of Z");
  const at::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  const at::Tensor g = g_in.contiguous();
  const at::Tensor dy = dy_in.to(z.scalar_type()).contiguous();
  const int B = z.size(0), H = z.size(1), W = z.size(2), C = z.size(3);
  at::Tensor states = states_in.numel() == 0 ? std::get<1>(propagate_fwd(z, g, true)) : states_in.contiguous();
  CHECK_SHAPE(states, kDirections, B, H * W, C);
  TORCH_CHECK(states.scalar_type() == at::kFloat, "propagate_bwd: states must be float32");
  const DType dtype = to_dtype(z.scalar_type());
  at::Tensor dz_partial = at::empty({kDirections, B, H, W, C}, z.options().dtype(at::kFloat));
  at::Tensor dz = at::empty_like(z);
  at::Tensor dg = at::empty_like(g);

  PropagateParams p;
  p.z = z.data_ptr();
  p.g = g.data_ptr();
  p.dy = dy.data_ptr();
  p.states_in = states.data_ptr<float>();
  p.partial = dz_partial.data_ptr<float>();
  p.dg = dg.data_ptr();
  p.batch = B;
  p.height = H;
  p.width = W;
  p.channels = C;
  p.numel = z.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  launch_propagate_bwd(p, choose_bwd_shape(B, H, W, C, z.scalar_type()), dtype, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_merge_directions(dz_partial.data_ptr<float>(), dz.data_ptr(), p.numel, dtype, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dz, dg};
}

}  // namespace cgspn
