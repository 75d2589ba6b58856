// C-GSPN propagation kernels (SPEC §3), templated on dtype T, channels a thread VEC and
// positions a thread PPT. One block scans all lines of one (channel block, direction, batch):
// the float32 state of a whole line lives in registers (each thread: PPT positions x VEC
// channels), the neighbour exchange h[t-1, p +- 1] goes through shared memory (two line slots,
// one barrier a line), and each direction writes a float32 partial merged afterwards in a
// fixed order (deterministic, no atomics). With 64-channel blocks a warp reads whole 128-byte
// lines, a position's five fields adjacent; the *_prefetch / STAGED variants stream the next
// line's inputs into shared memory with cp.async while the current line is computed (the scan
// is otherwise one DRAM latency a line: 1.9 ms -> 1.3 ms forward at 2058 px on the H100).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "propagate.h"

namespace cgspn {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* ptr, float (&out)[VEC]) {
  const Pack<T, VEC> pack = *reinterpret_cast<const Pack<T, VEC>*>(ptr);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = to_float(pack.v[i]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* ptr, const float (&in)[VEC]) {
  Pack<T, VEC> pack;
#pragma unroll
  for (int i = 0; i < VEC; ++i) pack.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T, VEC>*>(ptr) = pack;
}

template <int VEC>
__device__ __forceinline__ void zero(float (&x)[VEC]) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) x[i] = 0.f;
}

// FAST (16-bit inputs): hardware exp2/reciprocal approximations, ~1e-7 relative error, far under
// the output's bf16/fp16 rounding; float32 inputs get correctly rounded division and expf.
template <bool FAST>
__device__ __forceinline__ float divide(float a, float b) {
  if constexpr (FAST) return __fdividef(a, b);
  else return a / b;
}

template <bool FAST>
__device__ __forceinline__ float sigmoid(float x) {
  if constexpr (FAST) return __fdividef(1.f, 1.f + __expf(-x));
  else return 1.f / (1.f + expf(-x));
}

// Direction d turns the grid into lines (SPEC §3 table): TD/BU scan rows, LR/RL columns.
struct LineGeometry {
  int num_lines;
  int line_len;
  int64_t line_step;  // grid cells between consecutive lines
  int64_t pos_step;   // grid cells between consecutive positions of a line
  bool reverse;

  __device__ LineGeometry(int direction, int height, int width) {
    const bool column = direction >= 2;
    num_lines = column ? width : height;
    line_len = column ? height : width;
    line_step = column ? 1 : width;
    pos_step = column ? width : 1;
    reverse = direction & 1;
  }

  // grid cell (b, i, j) of position pos on the t-th line scanned
  __device__ __forceinline__ int64_t cell(int64_t grid_base, int t, int pos) const {
    const int line = reverse ? num_lines - 1 - t : t;
    return grid_base + line * line_step + pos * pos_step;
  }
};

template <int VEC>
struct Fields {
  float z[VEC], lam[VEC], u[VEC], wt_prev[VEC], wt_self[VEC], wt_next[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_fields(const T* z, const T* g, int64_t cell, int channels, int direction, int c0,
                                            Fields<VEC>& f) {
  load_vec<T, VEC>(z + cell * channels + c0, f.z);
  const T* row = g + cell * (kDirections * kFields * channels) + direction * kFields * channels + c0;
  load_vec<T, VEC>(row, f.lam);
  load_vec<T, VEC>(row + channels, f.u);
  load_vec<T, VEC>(row + 2 * channels, f.wt_prev);
  load_vec<T, VEC>(row + 3 * channels, f.wt_self);
  load_vec<T, VEC>(row + 4 * channels, f.wt_next);
}

// Row-stochastic neighbour weights of one element (invalid neighbours get gate 0).
template <bool FAST>
struct Weights {
  float gate_prev, gate_self, gate_next, total, norm, w_prev, w_self, w_next;
  __device__ __forceinline__ Weights(float wt_prev, float wt_self, float wt_next, bool has_prev, bool has_next) {
    gate_prev = has_prev ? sigmoid<FAST>(wt_prev) : 0.f;
    gate_self = sigmoid<FAST>(wt_self);
    gate_next = has_next ? sigmoid<FAST>(wt_next) : 0.f;
    total = gate_prev + gate_self + gate_next;
    norm = total >= kWeightEps ? total : kWeightEps;
    w_prev = divide<FAST>(gate_prev, norm);
    w_self = divide<FAST>(gate_self, norm);
    w_next = divide<FAST>(gate_next, norm);
  }
};

template <typename T>
constexpr bool kFastMath = sizeof(T) == 2;

// Threads a block: 16-byte vectors need up to 128 registers a thread (512 threads), narrower
// ones fit in 64 (1024 threads). The host's launch shape follows block_thread_limit().
template <typename T, int VEC>
constexpr int max_threads() {
  return VEC * static_cast<int>(sizeof(T)) >= 16 ? 512 : 1024;
}

template <typename T, int VEC, int PPT>
__global__ void __launch_bounds__(max_threads<T, VEC>()) propagate_fwd_kernel(const PropagateParams p) {
  extern __shared__ float smem[];  // [2 slots][PPT * blockDim.y positions][channel block]
  const int lanes = blockDim.x;
  const int cb = lanes * VEC;
  const int slots = blockDim.y * PPT;
  const int c0 = blockIdx.x * cb + threadIdx.x * VEC;
  const int direction = blockIdx.y;
  const int b = blockIdx.z;
  const LineGeometry geo(direction, p.height, p.width);
  const int len = geo.line_len;
  const bool c_ok = c0 < p.channels;
  const T* z = static_cast<const T*>(p.z);
  const T* g = static_cast<const T*>(p.g);
  const int64_t grid_base = static_cast<int64_t>(b) * p.height * p.width;
  float* partial = p.partial + direction * p.numel;
  float* states = p.states_out == nullptr
                      ? nullptr
                      : p.states_out + (static_cast<int64_t>(direction) * p.batch + b) * p.height * p.width * p.channels;

  float h[PPT][VEC];
#pragma unroll
  for (int k = 0; k < PPT; ++k) zero(h[k]);

  for (int t = 0; t < geo.num_lines; ++t) {
    const float* prev_line = smem + ((t + 1) & 1) * slots * cb;
    float* this_line = smem + (t & 1) * slots * cb;
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      const int pos = threadIdx.y + k * blockDim.y;
      if (!c_ok || pos >= len) continue;
      const bool has_prev = pos >= 1;
      const bool has_next = pos + 1 < len;
      const int64_t cell = geo.cell(grid_base, t, pos);
      Fields<VEC> f;
      load_fields<T, VEC>(z, g, cell, p.channels, direction, c0, f);
      float left[VEC], right[VEC], out[VEC];
      zero(left);
      zero(right);
      const int lane_off = threadIdx.x * VEC;
      if (t > 0) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          if (has_prev) left[v] = prev_line[(pos - 1) * cb + lane_off + v];
          if (has_next) right[v] = prev_line[(pos + 1) * cb + lane_off + v];
        }
      }
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const Weights<kFastMath<T>> w(f.wt_prev[v], f.wt_self[v], f.wt_next[v], has_prev, has_next);
        const float hv = w.w_prev * left[v] + w.w_self * h[k][v] + w.w_next * right[v] + f.lam[v] * f.z[v];
        h[k][v] = hv;
        out[v] = f.u[v] * hv;
        this_line[pos * cb + lane_off + v] = hv;
      }
      store_vec<float, VEC>(partial + cell * p.channels + c0, out);
      if (states != nullptr) store_vec<float, VEC>(states + (static_cast<int64_t>(t) * len + pos) * p.channels + c0, h[k]);
    }
    __syncthreads();
  }
}

// cp.async (sm_80+): 16-byte global -> shared copies that complete in the background.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(gmem_src), "n"(BYTES) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

constexpr int kChunks = 6;  // z, lambda, u, wt_prev, wt_self, wt_next: one VEC-channel chunk each

// Forward with the next line's inputs in flight while this line is computed: every thread
// copies its own chunks (cp.async) into private shared-memory slots, so no barrier guards them.
// Shared memory: [2 line slots of h][PPT][6 inputs][threads] (consecutive threads, consecutive
// chunks: no bank conflicts).
template <typename T, int VEC, int PPT>
__global__ void __launch_bounds__(max_threads<T, VEC>()) propagate_fwd_prefetch_kernel(const PropagateParams p) {
  using Chunk = Pack<T, VEC>;
  extern __shared__ __align__(16) float smem[];
  const int lanes = blockDim.x;
  const int cb = lanes * VEC;
  const int slots = blockDim.y * PPT;
  const int c0 = blockIdx.x * cb + threadIdx.x * VEC;
  const int direction = blockIdx.y;
  const int b = blockIdx.z;
  const LineGeometry geo(direction, p.height, p.width);
  const int len = geo.line_len;
  const int channels = p.channels;
  const bool c_ok = c0 < channels;
  const T* z = static_cast<const T*>(p.z);
  const T* g = static_cast<const T*>(p.g);
  const int64_t grid_base = static_cast<int64_t>(b) * p.height * p.width;
  float* partial = p.partial + direction * p.numel;
  float* states = p.states_out == nullptr
                      ? nullptr
                      : p.states_out + (static_cast<int64_t>(direction) * p.batch + b) * p.height * p.width * channels;
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;
  Chunk* staged = reinterpret_cast<Chunk*>(smem + 2 * slots * cb) + thread;  // chunk (k, i) at [(k*6+i)*nthreads]
  const int lane_off = threadIdx.x * VEC;

  // cp.async of position slot k's inputs on the t-th line (one chunk per input)
  auto issue = [&](int t, int k, int pos) {
    const int64_t cell = geo.cell(grid_base, t, pos);
    const T* row = g + cell * (kDirections * kFields * channels) + direction * kFields * channels + c0;
    Chunk* dst = staged + k * kChunks * nthreads;
    cp_async<sizeof(Chunk)>(dst, z + cell * channels + c0);
#pragma unroll
    for (int f = 0; f < kFields; ++f) cp_async<sizeof(Chunk)>(dst + (1 + f) * nthreads, row + f * channels);
  };

  float h[PPT][VEC];
#pragma unroll
  for (int k = 0; k < PPT; ++k) {
    zero(h[k]);
    const int pos = threadIdx.y + k * blockDim.y;
    if (c_ok && pos < len) issue(0, k, pos);
  }
  cp_async_commit();

  for (int t = 0; t < geo.num_lines; ++t) {
    const float* prev_line = smem + ((t + 1) & 1) * slots * cb;
    float* this_line = smem + (t & 1) * slots * cb;
    cp_async_wait_all();
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      const int pos = threadIdx.y + k * blockDim.y;
      if (!c_ok || pos >= len) continue;
      Fields<VEC> f;  // this line's inputs out of the staging slot, then the slot refills
      const Chunk* chunk = staged + k * kChunks * nthreads;
      Chunk in[kChunks];
#pragma unroll
      for (int i = 0; i < kChunks; ++i) in[i] = chunk[i * nthreads];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        f.z[v] = to_float(in[0].v[v]);
        f.lam[v] = to_float(in[1].v[v]);
        f.u[v] = to_float(in[2].v[v]);
        f.wt_prev[v] = to_float(in[3].v[v]);
        f.wt_self[v] = to_float(in[4].v[v]);
        f.wt_next[v] = to_float(in[5].v[v]);
      }
      if (t + 1 < geo.num_lines) issue(t + 1, k, pos);  // the next line streams in meanwhile
      const bool has_prev = pos >= 1;
      const bool has_next = pos + 1 < len;
      float left[VEC], right[VEC], out[VEC];
      zero(left);
      zero(right);
      if (t > 0) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          if (has_prev) left[v] = prev_line[(pos - 1) * cb + lane_off + v];
          if (has_next) right[v] = prev_line[(pos + 1) * cb + lane_off + v];
        }
      }
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const Weights<kFastMath<T>> w(f.wt_prev[v], f.wt_self[v], f.wt_next[v], has_prev, has_next);
        const float hv = w.w_prev * left[v] + w.w_self * h[k][v] + w.w_next * right[v] + f.lam[v] * f.z[v];
        h[k][v] = hv;
        out[v] = f.u[v] * hv;
        this_line[pos * cb + lane_off + v] = hv;
      }
      const int64_t cell = geo.cell(grid_base, t, pos);
      store_vec<float, VEC>(partial + cell * channels + c0, out);
      if (states != nullptr) store_vec<float, VEC>(states + (static_cast<int64_t>(t) * len + pos) * channels + c0, h[k]);
    }
    cp_async_commit();
    __syncthreads();
  }
}

// Shared memory of the prefetching forward, or 0 when it does not fit the device.
inline size_t prefetch_smem_bytes(const LaunchShape& shape, int elem_bytes) {
  const size_t exchange = static_cast<size_t>(2) * shape.threads_p * shape.ppt * shape.lanes * shape.vec * sizeof(float);
  const size_t staging = static_cast<size_t>(shape.lanes) * shape.threads_p * shape.ppt * kChunks * shape.vec * elem_bytes;
  int device = 0, optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return exchange + staging <= static_cast<size_t>(optin) ? exchange + staging : 0;
}

template <typename Kernel>
void launch_prefetch(Kernel kernel, const PropagateParams& params, const LaunchShape& shape, size_t smem,
                     cudaStream_t stream) {
  const dim3 block(shape.lanes, shape.threads_p);
  const dim3 grid((params.channels + shape.lanes * shape.vec - 1) / (shape.lanes * shape.vec), kDirections,
                  params.batch);
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  kernel<<<grid, block, smem, stream>>>(params);
}

template <typename T, int VEC>
void launch_fwd_prefetch_vec(const PropagateParams& params, const LaunchShape& shape, size_t smem,
                             cudaStream_t stream) {
  switch (shape.ppt) {
    case 1: launch_prefetch(propagate_fwd_prefetch_kernel<T, VEC, 1>, params, shape, smem, stream); break;
    case 2: launch_prefetch(propagate_fwd_prefetch_kernel<T, VEC, 2>, params, shape, smem, stream); break;
    case 4: launch_prefetch(propagate_fwd_prefetch_kernel<T, VEC, 4>, params, shape, smem, stream); break;
    default: launch_prefetch(propagate_fwd_prefetch_kernel<T, VEC, 8>, params, shape, smem, stream); break;
  }
}

// The prefetching forward for 16- and 8-byte chunks, when its shared memory fits the device.
template <typename T>
bool try_launch_fwd_prefetch(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const size_t smem = prefetch_smem_bytes(shape, sizeof(T));
  if (smem == 0) return false;
  if (shape.vec == kVec)
    launch_fwd_prefetch_vec<T, kVec>(params, shape, smem, stream);
  else if (shape.vec == kVec / 2)
    launch_fwd_prefetch_vec<T, kVec / 2>(params, shape, smem, stream);
  else
    return false;
  return true;
}

constexpr int kBwdChunks = 7;  // z, dy, lambda, u, wt_prev, wt_self, wt_next

// Backward (reverse scan). STAGED: the inputs of the line visited next stream into private
// shared-memory slots (cp.async) while this one is computed, as in the prefetching forward.
// Shared memory: [2 slots][q_prev, q_next][positions][channel block] (what line t+1 drew
// from each position), then, when STAGED, [PPT][7 inputs][threads] chunks.
template <typename T, int VEC, int PPT, bool STAGED>
__global__ void __launch_bounds__(max_threads<T, VEC>()) propagate_bwd_kernel(const PropagateParams p) {
  using Chunk = Pack<T, VEC>;
  extern __shared__ __align__(16) float smem[];
  const int lanes = blockDim.x;
  const int cb = lanes * VEC;
  const int slots = blockDim.y * PPT;
  const int c0 = blockIdx.x * cb + threadIdx.x * VEC;
  const int lane_off = threadIdx.x * VEC;
  const int direction = blockIdx.y;
  const int b = blockIdx.z;
  const LineGeometry geo(direction, p.height, p.width);
  const int len = geo.line_len;
  const int channels = p.channels;
  const bool c_ok = c0 < channels;
  const T* z = static_cast<const T*>(p.z);
  const T* g = static_cast<const T*>(p.g);
  const T* dy_ptr = static_cast<const T*>(p.dy);
  T* dg = static_cast<T*>(p.dg);
  const int64_t grid_base = static_cast<int64_t>(b) * p.height * p.width;
  float* dz_partial = p.partial + direction * p.numel;
  const float* states =
      p.states_in + (static_cast<int64_t>(direction) * p.batch + b) * p.height * p.width * channels;
  const int64_t line_elems = static_cast<int64_t>(len) * channels;
  const int nthreads = blockDim.x * blockDim.y;
  Chunk* staged = reinterpret_cast<Chunk*>(smem + 4 * slots * cb) + threadIdx.y * blockDim.x + threadIdx.x;

  // cp.async of position slot k's inputs on the t-th line (STAGED only)
  auto issue = [&](int t, int k, int pos) {
    const int64_t cell = geo.cell(grid_base, t, pos);
    const T* row = g + cell * (kDirections * kFields * channels) + direction * kFields * channels + c0;
    Chunk* dst = staged + k * kBwdChunks * nthreads;
    cp_async<sizeof(Chunk)>(dst, z + cell * channels + c0);
    cp_async<sizeof(Chunk)>(dst + nthreads, dy_ptr + cell * channels + c0);
#pragma unroll
    for (int f = 0; f < kFields; ++f) cp_async<sizeof(Chunk)>(dst + (2 + f) * nthreads, row + f * channels);
  };

  float q_self[PPT][VEC];
#pragma unroll
  for (int k = 0; k < PPT; ++k) {
    zero(q_self[k]);
    if constexpr (STAGED) {
      const int pos = threadIdx.y + k * blockDim.y;
      if (c_ok && pos < len) issue(geo.num_lines - 1, k, pos);
    }
  }
  if constexpr (STAGED) cp_async_commit();

  for (int step = 0; step < geo.num_lines; ++step) {
    const int t = geo.num_lines - 1 - step;
    const float* read_slot = smem + ((step + 1) & 1) * 2 * slots * cb;
    float* write_slot = smem + (step & 1) * 2 * slots * cb;
    if constexpr (STAGED) cp_async_wait_all();
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      const int pos = threadIdx.y + k * blockDim.y;
      if (!c_ok || pos >= len) continue;
      const bool has_prev = pos >= 1;
      const bool has_next = pos + 1 < len;
      const int64_t cell = geo.cell(grid_base, t, pos);
      Fields<VEC> f;
      float dy[VEC], h[VEC], left[VEC], mid[VEC], right[VEC], from_right[VEC], from_left[VEC];
      if constexpr (STAGED) {
        const Chunk* chunk = staged + k * kBwdChunks * nthreads;
        Chunk in[kBwdChunks];
#pragma unroll
        for (int i = 0; i < kBwdChunks; ++i) in[i] = chunk[i * nthreads];
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          f.z[v] = to_float(in[0].v[v]);
          dy[v] = to_float(in[1].v[v]);
          f.lam[v] = to_float(in[2].v[v]);
          f.u[v] = to_float(in[3].v[v]);
          f.wt_prev[v] = to_float(in[4].v[v]);
          f.wt_self[v] = to_float(in[5].v[v]);
          f.wt_next[v] = to_float(in[6].v[v]);
        }
        if (t > 0) issue(t - 1, k, pos);  // the line visited next streams in meanwhile
      } else {
        load_fields<T, VEC>(z, g, cell, channels, direction, c0, f);
        load_vec<T, VEC>(dy_ptr + cell * channels + c0, dy);
      }
      const float* state_t = states + t * line_elems + static_cast<int64_t>(pos) * channels + c0;
      load_vec<float, VEC>(state_t, h);
      zero(left);
      zero(mid);
      zero(right);
      if (t > 0) {
        load_vec<float, VEC>(state_t - line_elems, mid);
        if (has_prev) load_vec<float, VEC>(state_t - line_elems - channels, left);
        if (has_next) load_vec<float, VEC>(state_t - line_elems + channels, right);
      }
      zero(from_right);
      zero(from_left);
      if (step > 0) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          if (has_next) from_right[v] = read_slot[(pos + 1) * cb + lane_off + v];              // q_prev[t+1, p+1]
          if (has_prev) from_left[v] = read_slot[(slots + pos - 1) * cb + lane_off + v];      // q_next[t+1, p-1]
        }
      }
      float d_lam[VEC], d_u[VEC], d_prev[VEC], d_self[VEC], d_next[VEC], d_z[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const float adj = dy[v] * f.u[v] + q_self[k][v] + from_right[v] + from_left[v];
        constexpr bool kFast = kFastMath<T>;
        const Weights<kFast> w(f.wt_prev[v], f.wt_self[v], f.wt_next[v], has_prev, has_next);
        const float w_prev = w.w_prev;
        const float w_self = w.w_self;
        const float w_next = w.w_next;
        write_slot[pos * cb + lane_off + v] = w_prev * adj;
        write_slot[(slots + pos) * cb + lane_off + v] = w_next * adj;
        q_self[k][v] = w_self * adj;
        const float dw_prev = adj * left[v];
        const float dw_self = adj * mid[v];
        const float dw_next = adj * right[v];
        const float d_norm = -divide<kFast>(dw_prev * w_prev + dw_self * w_self + dw_next * w_next, w.norm);
        const float d_total = w.total >= kWeightEps ? d_norm : 0.f;
        d_prev[v] = has_prev ? (divide<kFast>(dw_prev, w.norm) + d_total) * w.gate_prev * (1.f - w.gate_prev) : 0.f;
        d_self[v] = (divide<kFast>(dw_self, w.norm) + d_total) * w.gate_self * (1.f - w.gate_self);
        d_next[v] = has_next ? (divide<kFast>(dw_next, w.norm) + d_total) * w.gate_next * (1.f - w.gate_next) : 0.f;
        d_lam[v] = adj * f.z[v];
        d_u[v] = dy[v] * h[v];
        d_z[v] = adj * f.lam[v];
      }
      T* row = dg + cell * (kDirections * kFields * channels) + direction * kFields * channels + c0;
      store_vec<T, VEC>(row, d_lam);
      store_vec<T, VEC>(row + channels, d_u);
      store_vec<T, VEC>(row + 2 * channels, d_prev);
      store_vec<T, VEC>(row + 3 * channels, d_self);
      store_vec<T, VEC>(row + 4 * channels, d_next);
      store_vec<float, VEC>(dz_partial + cell * channels + c0, d_z);
    }
    if constexpr (STAGED) cp_async_commit();
    __syncthreads();
  }
}

template <typename T>
__global__ void merge_directions_kernel(const float* __restrict__ partials, T* __restrict__ out, int64_t numel) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const float td = partials[i];
    const float bu = partials[numel + i];
    const float lr = partials[2 * numel + i];
    const float rl = partials[3 * numel + i];
    out[i] = from_float<T>((td + bu) + (lr + rl));
  }
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

template <typename Kernel>
void launch_scan(Kernel kernel, const PropagateParams& params, const LaunchShape& shape, int ppt, int slot_arrays,
                 cudaStream_t stream, size_t staging_bytes = 0) {
  const dim3 block(shape.lanes, shape.threads_p);
  const dim3 grid(ceil_div(params.channels, shape.lanes * shape.vec), kDirections, params.batch);
  const size_t smem =
      static_cast<size_t>(2) * slot_arrays * shape.threads_p * ppt * shape.lanes * shape.vec * sizeof(float) +
      staging_bytes;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  kernel<<<grid, block, smem, stream>>>(params);
}

template <typename T, int VEC>
void launch_fwd_vec(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  switch (shape.ppt) {
    case 1: launch_scan(propagate_fwd_kernel<T, VEC, 1>, params, shape, 1, 1, stream); break;
    case 2: launch_scan(propagate_fwd_kernel<T, VEC, 2>, params, shape, 2, 1, stream); break;
    case 4: launch_scan(propagate_fwd_kernel<T, VEC, 4>, params, shape, 4, 1, stream); break;
    default: launch_scan(propagate_fwd_kernel<T, VEC, 8>, params, shape, 8, 1, stream); break;
  }
}

template <typename T, int VEC, bool STAGED>
void launch_bwd_staged(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  const size_t staging =
      STAGED ? static_cast<size_t>(shape.lanes) * shape.threads_p * shape.ppt * kBwdChunks * VEC * sizeof(T) : 0;
  switch (shape.ppt) {
    case 1: launch_scan(propagate_bwd_kernel<T, VEC, 1, STAGED>, params, shape, 1, 2, stream, staging); break;
    case 2: launch_scan(propagate_bwd_kernel<T, VEC, 2, STAGED>, params, shape, 2, 2, stream, staging); break;
    case 4: launch_scan(propagate_bwd_kernel<T, VEC, 4, STAGED>, params, shape, 4, 2, stream, staging); break;
    default: launch_scan(propagate_bwd_kernel<T, VEC, 8, STAGED>, params, shape, 8, 2, stream, staging); break;
  }
}

template <typename T, int VEC>
void launch_bwd_vec(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  if constexpr (VEC * sizeof(T) >= 8) {
    if (shape.prefetch) {
      launch_bwd_staged<T, VEC, true>(params, shape, stream);
      return;
    }
  }
  launch_bwd_staged<T, VEC, false>(params, shape, stream);
}

// Explicit per-dtype entry points (one .cu file each instantiates one dtype).
template <typename T>
void launch_fwd_typed(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (shape.prefetch && try_launch_fwd_prefetch<T>(params, shape, stream)) return;
  if (shape.vec == kVec)
    launch_fwd_vec<T, kVec>(params, shape, stream);
  else if (shape.vec == kVec / 2)
    launch_fwd_vec<T, kVec / 2>(params, shape, stream);
  else
    launch_fwd_vec<T, 1>(params, shape, stream);
}

template <typename T>
void launch_bwd_typed(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (shape.vec == kVec)
    launch_bwd_vec<T, kVec>(params, shape, stream);
  else if (shape.vec == kVec / 2)
    launch_bwd_vec<T, kVec / 2>(params, shape, stream);
  else
    launch_bwd_vec<T, 1>(params, shape, stream);
}

template <typename T>
void launch_merge_typed(const float* partials, void* out, int64_t numel, cudaStream_t stream) {
  const int threads = 256;
  const int64_t blocks = (numel + threads - 1) / threads;
  const int grid = static_cast<int>(blocks < 65536 ? blocks : 65536);
  merge_directions_kernel<T><<<grid, threads, 0, stream>>>(partials, static_cast<T*>(out), numel);
}

}  // namespace cgspn
