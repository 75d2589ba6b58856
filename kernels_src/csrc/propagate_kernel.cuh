// C-GSPN propagation kernels (SPEC §3), templated on dtype T, channels a thread VEC and
// positions a thread PPT. One block scans all lines of one (channel block, direction, batch):
// the float32 state of a whole line lives in registers (each thread: PPT positions x VEC
// channels), the neighbour exchange h[t-1, p +- 1] goes through shared memory (two line slots,
// one barrier a line), and each direction writes a float32 partial merged afterwards in a
// fixed order (deterministic, no atomics). With 64-channel blocks a warp reads whole 128-byte
// lines, a position's five fields adjacent. The inputs of the next lines stream into shared
// memory with cp.async while the current line is computed (InputStream; the scan is otherwise
// one DRAM latency a line: 1.9 ms -> 1.3 ms forward at 2058 px on the H100 with one line ahead).
#pragma once

#include <type_traits>

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

// Offset of direction `direction`'s first field (lambda) at grid cell `cell` in G / dG (B, H, W, 4, 5, C).
__device__ __forceinline__ int64_t field_row(int64_t cell, int channels, int direction) {
  return cell * (kDirections * kFields * channels) + direction * kFields * channels;
}

template <typename T, int VEC>
__device__ __forceinline__ void load_fields(const T* z, const T* g, int64_t cell, int channels, int direction, int c0,
                                            Fields<VEC>& f) {
  load_vec<T, VEC>(z + cell * channels + c0, f.z);
  const T* row = g + field_row(cell, channels, direction) + c0;
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

// cp.async (sm_80+): 8- or 16-byte global -> shared copies that complete in the background.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(gmem_src), "n"(BYTES) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most `pending` (0 .. kMaxStages - 1) of this thread's copy groups are in flight.
__device__ __forceinline__ void cp_async_wait_pending(int pending) {
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
  }
}

// The inputs a thread reads at its positions of each line: z, dy (backward only), then the direction's five
// fields. With `stages` > 0 the next `stages` lines' inputs stream into a ring of shared-memory slots with
// cp.async (one copy group a line) while the current line is computed, so the scan pays one DRAM latency
// every `stages` lines instead of every line; with 0 they are loaded from global memory when needed. Each
// thread copies and reads only its own chunks, so no barrier guards the ring. Ring layout: chunk
// (stage, position slot k, input i) at [((stage * PPT + k) * kInputs + i) * threads + thread] (consecutive
// threads, consecutive chunks: no bank conflicts).
template <typename T, int VEC, int PPT, bool WITH_DY>
class InputStream {
 public:
  using Chunk = Pack<T, VEC>;
  static constexpr int kInputs = WITH_DY ? kBackwardInputs : kForwardInputs;
  static constexpr bool kCanStage = sizeof(Chunk) >= 8;

  // `reverse`: lines visited last to first (the backward's order); `active`: the thread's channels exist.
  __device__ InputStream(const PropagateParams& p, const LineGeometry& geo, int direction, int c0, bool active,
                         bool reverse, void* ring, int stages)
      : z_(static_cast<const T*>(p.z)),
        dy_(static_cast<const T*>(p.dy)),
        g_(static_cast<const T*>(p.g)),
        geo_(geo),
        grid_base_(static_cast<int64_t>(blockIdx.z) * p.height * p.width),
        channels_(p.channels),
        direction_(direction),
        c0_(c0),
        active_(active),
        reverse_(reverse),
        threads_(blockDim.x * blockDim.y),
        stages_(kCanStage ? stages : 0),
        stage_(0),
        ring_(static_cast<Chunk*>(ring) + threadIdx.y * blockDim.x + threadIdx.x) {
    for (int s = 0; s < stages_; ++s) {
#pragma unroll
      for (int k = 0; k < PPT; ++k) issue(s, s, k);
      cp_async_commit();
    }
  }

  // Line scanned at `step` (0 = the first one visited).
  __device__ __forceinline__ int line(int step) const { return reverse_ ? geo_.num_lines - 1 - step : step; }
  __device__ __forceinline__ int64_t cell(int step, int pos) const { return geo_.cell(grid_base_, line(step), pos); }

  // Before reading the inputs of `step`: its copies have landed.
  __device__ __forceinline__ void wait() const {
    if (stages_ > 0) cp_async_wait_pending(stages_ - 1);
  }

  // The inputs of position slot k (grid cell `cell`) at `step`; then the slot starts receiving step + stages.
  __device__ __forceinline__ void read(int step, int k, int64_t cell, Fields<VEC>& f, float (&dy)[VEC]) {
    if (stages_ > 0) {
      const Chunk* src = ring_ + (stage_ * PPT + k) * kInputs * threads_;
      Chunk in[kInputs];
#pragma unroll
      for (int i = 0; i < kInputs; ++i) in[i] = src[i * threads_];
      constexpr int o = kInputs - kFields;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        f.z[v] = to_float(in[0].v[v]);
        if constexpr (WITH_DY) dy[v] = to_float(in[1].v[v]);
        f.lam[v] = to_float(in[o].v[v]);
        f.u[v] = to_float(in[o + 1].v[v]);
        f.wt_prev[v] = to_float(in[o + 2].v[v]);
        f.wt_self[v] = to_float(in[o + 3].v[v]);
        f.wt_next[v] = to_float(in[o + 4].v[v]);
      }
      issue(step + stages_, stage_, k);
    } else {
      load_fields<T, VEC>(z_, g_, cell, channels_, direction_, c0_, f);
      if constexpr (WITH_DY) load_vec<T, VEC>(dy_ + cell * channels_ + c0_, dy);
    }
  }

  // After the line: its refills form one copy group; the next line's stage comes up.
  __device__ __forceinline__ void next_line() {
    if (stages_ == 0) return;
    cp_async_commit();
    stage_ = stage_ + 1 == stages_ ? 0 : stage_ + 1;
  }

 private:
  __device__ __forceinline__ void issue(int step, int stage, int k) const {
    if constexpr (kCanStage) {
      const int pos = threadIdx.y + k * blockDim.y;
      if (!active_ || pos >= geo_.line_len || step >= geo_.num_lines) return;
      const int64_t at = cell(step, pos);
      Chunk* dst = ring_ + (stage * PPT + k) * kInputs * threads_;
      cp_async<sizeof(Chunk)>(dst, z_ + at * channels_ + c0_);
      if constexpr (WITH_DY) cp_async<sizeof(Chunk)>(dst + threads_, dy_ + at * channels_ + c0_);
      const T* row = g_ + field_row(at, channels_, direction_) + c0_;
#pragma unroll
      for (int i = 0; i < kFields; ++i) cp_async<sizeof(Chunk)>(dst + (kInputs - kFields + i) * threads_, row + i * channels_);
    }
  }

  const T* z_;
  const T* dy_;
  const T* g_;
  LineGeometry geo_;
  int64_t grid_base_;
  int channels_, direction_, c0_;
  bool active_, reverse_;
  int threads_, stages_, stage_;
  Chunk* ring_;
};

template <typename T, int VEC, int PPT>
__global__ void __launch_bounds__(max_threads<T, VEC>()) propagate_fwd_kernel(const PropagateParams p, const int stages) {
  extern __shared__ __align__(16) float smem[];  // [2 line slots][PPT * blockDim.y positions][channel block], ring
  const int lanes = blockDim.x;
  const int cb = lanes * VEC;
  const int slots = blockDim.y * PPT;
  const int c0 = blockIdx.x * cb + threadIdx.x * VEC;
  const int lane_off = threadIdx.x * VEC;
  const int direction = blockIdx.y;
  const LineGeometry geo(direction, p.height, p.width);
  const int len = geo.line_len;
  const bool c_ok = c0 < p.channels;
  float* partial = p.partial + direction * p.numel;
  float* states = p.states_out == nullptr ? nullptr
                                          : p.states_out + (static_cast<int64_t>(direction) * p.batch + blockIdx.z) *
                                                               p.height * p.width * p.channels;
  InputStream<T, VEC, PPT, false> in(p, geo, direction, c0, c_ok, false, smem + 2 * slots * cb, stages);

  float h[PPT][VEC];
#pragma unroll
  for (int k = 0; k < PPT; ++k) zero(h[k]);

  for (int t = 0; t < geo.num_lines; ++t) {
    const float* prev_line = smem + ((t + 1) & 1) * slots * cb;
    float* this_line = smem + (t & 1) * slots * cb;
    in.wait();
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      const int pos = threadIdx.y + k * blockDim.y;
      if (!c_ok || pos >= len) continue;
      const bool has_prev = pos >= 1;
      const bool has_next = pos + 1 < len;
      const int64_t cell = in.cell(t, pos);
      Fields<VEC> f;
      float unused[VEC];
      in.read(t, k, cell, f, unused);
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
      store_vec<float, VEC>(partial + cell * p.channels + c0, out);
      if (states != nullptr) store_vec<float, VEC>(states + (static_cast<int64_t>(t) * len + pos) * p.channels + c0, h[k]);
    }
    in.next_line();
    __syncthreads();
  }
}

// Backward (reverse scan), its inputs streamed as in the forward. Shared memory: [2 slots][q_prev, q_next]
// [positions][channel block] (what line t+1 drew from each position), then the input ring.
template <typename T, int VEC, int PPT>
__global__ void __launch_bounds__(max_threads<T, VEC>()) propagate_bwd_kernel(const PropagateParams p, const int stages) {
  extern __shared__ __align__(16) float smem[];
  const int lanes = blockDim.x;
  const int cb = lanes * VEC;
  const int slots = blockDim.y * PPT;
  const int c0 = blockIdx.x * cb + threadIdx.x * VEC;
  const int lane_off = threadIdx.x * VEC;
  const int direction = blockIdx.y;
  const LineGeometry geo(direction, p.height, p.width);
  const int len = geo.line_len;
  const int channels = p.channels;
  const bool c_ok = c0 < channels;
  T* dg = static_cast<T*>(p.dg);
  float* dz_partial = p.partial + direction * p.numel;
  const float* states =
      p.states_in + (static_cast<int64_t>(direction) * p.batch + blockIdx.z) * p.height * p.width * channels;
  const int64_t line_elems = static_cast<int64_t>(len) * channels;
  InputStream<T, VEC, PPT, true> in(p, geo, direction, c0, c_ok, true, smem + 4 * slots * cb, stages);

  float q_self[PPT][VEC];
#pragma unroll
  for (int k = 0; k < PPT; ++k) zero(q_self[k]);

  for (int step = 0; step < geo.num_lines; ++step) {
    const int t = in.line(step);
    const float* read_slot = smem + ((step + 1) & 1) * 2 * slots * cb;
    float* write_slot = smem + (step & 1) * 2 * slots * cb;
    in.wait();
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      const int pos = threadIdx.y + k * blockDim.y;
      if (!c_ok || pos >= len) continue;
      const bool has_prev = pos >= 1;
      const bool has_next = pos + 1 < len;
      const int64_t cell = in.cell(step, pos);
      Fields<VEC> f;
      float dy[VEC], h[VEC], left[VEC], mid[VEC], right[VEC], from_right[VEC], from_left[VEC];
      in.read(step, k, cell, f, dy);
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
          if (has_next) from_right[v] = read_slot[(pos + 1) * cb + lane_off + v];          // q_prev[t+1, p+1]
          if (has_prev) from_left[v] = read_slot[(slots + pos - 1) * cb + lane_off + v];  // q_next[t+1, p-1]
        }
      }
      float d_lam[VEC], d_u[VEC], d_prev[VEC], d_self[VEC], d_next[VEC], d_z[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const float adj = dy[v] * f.u[v] + q_self[k][v] + from_right[v] + from_left[v];
        constexpr bool kFast = kFastMath<T>;
        const Weights<kFast> w(f.wt_prev[v], f.wt_self[v], f.wt_next[v], has_prev, has_next);
        write_slot[pos * cb + lane_off + v] = w.w_prev * adj;
        write_slot[(slots + pos) * cb + lane_off + v] = w.w_next * adj;
        q_self[k][v] = w.w_self * adj;
        const float dw_prev = adj * left[v];
        const float dw_self = adj * mid[v];
        const float dw_next = adj * right[v];
        const float d_norm = -divide<kFast>(dw_prev * w.w_prev + dw_self * w.w_self + dw_next * w.w_next, w.norm);
        const float d_total = w.total >= kWeightEps ? d_norm : 0.f;
        d_prev[v] = has_prev ? (divide<kFast>(dw_prev, w.norm) + d_total) * w.gate_prev * (1.f - w.gate_prev) : 0.f;
        d_self[v] = (divide<kFast>(dw_self, w.norm) + d_total) * w.gate_self * (1.f - w.gate_self);
        d_next[v] = has_next ? (divide<kFast>(dw_next, w.norm) + d_total) * w.gate_next * (1.f - w.gate_next) : 0.f;
        d_lam[v] = adj * f.z[v];
        d_u[v] = dy[v] * h[v];
        d_z[v] = adj * f.lam[v];
      }
      T* row = dg + field_row(cell, channels, direction) + c0;
      store_vec<T, VEC>(row, d_lam);
      store_vec<T, VEC>(row + channels, d_u);
      store_vec<T, VEC>(row + 2 * channels, d_prev);
      store_vec<T, VEC>(row + 3 * channels, d_self);
      store_vec<T, VEC>(row + 4 * channels, d_next);
      store_vec<float, VEC>(dz_partial + cell * channels + c0, d_z);
    }
    in.next_line();
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

// One scan kernel over (channel blocks, directions, batch): `line_arrays` float32 line-exchange arrays
// (forward 1, backward 2) of two line slots, then the input ring.
template <typename Kernel>
void launch_scan(Kernel kernel, const PropagateParams& params, const LaunchShape& shape, int line_arrays, int inputs,
                 int elem_bytes, cudaStream_t stream) {
  const dim3 block(shape.lanes, shape.threads_p);
  const dim3 grid(ceil_div(params.channels, shape.lanes * shape.vec), kDirections, params.batch);
  const size_t smem = exchange_bytes(shape, line_arrays) + ring_bytes(shape, inputs, elem_bytes);
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  kernel<<<grid, block, smem, stream>>>(params, shape.stages);
}

template <typename T, int VEC, bool BACKWARD>
void launch_vec(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  constexpr int kArrays = BACKWARD ? 2 : 1;
  constexpr int kInputs = BACKWARD ? kBackwardInputs : kForwardInputs;
  auto kernel = [](auto ppt) {
    constexpr int kPpt = decltype(ppt)::value;
    if constexpr (BACKWARD) return propagate_bwd_kernel<T, VEC, kPpt>;
    else return propagate_fwd_kernel<T, VEC, kPpt>;
  };
  switch (shape.ppt) {
    case 1: launch_scan(kernel(std::integral_constant<int, 1>()), params, shape, kArrays, kInputs, sizeof(T), stream); break;
    case 2: launch_scan(kernel(std::integral_constant<int, 2>()), params, shape, kArrays, kInputs, sizeof(T), stream); break;
    case 4: launch_scan(kernel(std::integral_constant<int, 4>()), params, shape, kArrays, kInputs, sizeof(T), stream); break;
    default: launch_scan(kernel(std::integral_constant<int, 8>()), params, shape, kArrays, kInputs, sizeof(T), stream); break;
  }
}

// Explicit per-dtype entry points (one .cu file each instantiates one dtype): 16-, 8-byte or one-value vectors.
template <typename T, bool BACKWARD>
void launch_typed(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (shape.vec == kVec)
    launch_vec<T, kVec, BACKWARD>(params, shape, stream);
  else if (shape.vec == kVec / 2)
    launch_vec<T, kVec / 2, BACKWARD>(params, shape, stream);
  else
    launch_vec<T, 1, BACKWARD>(params, shape, stream);
}

template <typename T>
void launch_fwd_typed(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_typed<T, false>(params, shape, stream);
}

template <typename T>
void launch_bwd_typed(const PropagateParams& params, const LaunchShape& shape, cudaStream_t stream) {
  launch_typed<T, true>(params, shape, stream);
}

template <typename T>
void launch_merge_typed(const float* partials, void* out, int64_t numel, cudaStream_t stream) {
  const int threads = 256;
  const int64_t blocks = (numel + threads - 1) / threads;
  const int grid = static_cast<int>(blocks < 65536 ? blocks : 65536);
  merge_directions_kernel<T><<<grid, threads, 0, stream>>>(partials, static_cast<T*>(out), numel);
}

}  // namespace cgspn
