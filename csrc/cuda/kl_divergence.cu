// KL divergence between softened class distributions, CUDA kernels.
//
// Forward: one sweep (online softmax), each logit read once. Every thread folds its classes into a running KlState
// (../kl_state.h: both maxima and sums, and the KL's sum relative to the teacher's maximum class, so that the teacher
// gradient of a saturated row does not cancel), and states are merged by a fixed tree: within a warp by shuffles,
// across warps through shared memory. Short rows take a warp each; longer rows take a block per chunk, with enough
// chunks per row to fill the GPU at a small batch, and a second kernel merges each row's chunk states in a fixed order.
// The cut depends on B and C only, never on the device or timing; no atomics. Backward: no reduction; the forward's
// cut, each warp or block with its row's statistics in registers (a division and seven loads of the statistics per
// element made a thread-per-element loop issue-bound), except rows under 32 classes: a thread per element.
#include <cmath>

#include "../kl_state.h"
#include "common.cuh"

namespace zskt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kWarpRowMax = 2048;       // rows up to this long: a warp per row
constexpr int64_t kWarpRowMin = 32;         // (the backward's rows shorter than this: a thread per element)
constexpr int64_t kClassesPerChunk = 4096;  // longer rows: a block per chunk, at most one chunk per this many classes,
constexpr int64_t kTargetBlocks = 1024;     // and as many as reach this many blocks in all (several per multiprocessor)
constexpr int kUnroll = 4;                  // loads in flight per thread before they are folded in

// Exponentials in base 2, log2(e) folded into the scale (../kl_state.h): one instruction each in float.
template <typename A>
using State = KlState<A, Base2Exp>;

// Kernels with a warp per row: this warp's row, and the blocks that give B rows a warp each.
__device__ __forceinline__ int64_t warp_row() {
  return static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
}
unsigned int warp_row_blocks(int64_t B) { return static_cast<unsigned int>((B + kWarps - 1) / kWarps); }

template <typename A>
__device__ State<A> shuffle(const State<A>& s, int lane_mask) {
  return {__shfl_xor_sync(0xffffffffu, s.m_t, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.sum_t, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.y_ref, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.w, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.m_s, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.sum_s, lane_mask),
          static_cast<bool>(__shfl_xor_sync(0xffffffffu, static_cast<int>(s.infinite), lane_mask))};
}

// Every lane takes part; lane 0's state is the whole warp's, merged in a fixed order.
template <typename A>
__device__ State<A> warp_merge(State<A> s, A tau) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) s.merge(shuffle(s, offset), tau);
  return s;
}

// Calls f(c, x, y) for the classes c = first, first + stride, ... below end of one row pair (teacher logit x, student
// logit y, in A), with kUnroll classes' loads in flight before the first of them is used.
template <typename A, typename T, typename F>
__device__ __forceinline__ void for_classes(const T* __restrict__ s, const T* __restrict__ t, int64_t first,
                                            int64_t end, int stride, F&& f) {
  int64_t c = first;
  for (; c + (kUnroll - 1) * static_cast<int64_t>(stride) < end; c += kUnroll * static_cast<int64_t>(stride)) {
    A x[kUnroll], y[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      x[k] = load<A>(t + c + k * stride);
      y[k] = load<A>(s + c + k * stride);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) f(c + k * stride, x[k], y[k]);
  }
  for (; c < end; c += stride) f(c, load<A>(t + c), load<A>(s + c));
}

// The state of the classes first, first + stride, ... below end of one row pair.
template <typename T, typename A>
__device__ State<A> fold(const T* __restrict__ s, const T* __restrict__ t, int64_t first, int64_t end, int stride,
                         A inv_tau) {
  auto state = State<A>::empty();
  for_classes<A>(s, t, first, end, stride, [&](int64_t, A x, A y) { state.add(x, y, inv_tau); });
  return state;
}

// Rows of up to kWarpRowMax classes: a warp per row.
template <typename T, typename A>
__global__ void kl_forward_warp_kernel(const T* __restrict__ student, const T* __restrict__ teacher, int64_t B,
                                       int64_t C, A inv_tau, A* __restrict__ kl, A* __restrict__ stats_s,
                                       A* __restrict__ stats_t) {
  const int lane = threadIdx.x & 31;
  const int64_t row = warp_row();
  if (row >= B) return;  // whole warps leave together
  const auto state = warp_merge(fold(student + row * C, teacher + row * C, lane, C, 32, inv_tau), inv_tau);
  if (lane == 0) state.finish(inv_tau, kl + row, stats_s + 2 * row, stats_t + 4 * row);
}

// Longer rows: block i handles chunk i % chunks (classes [chunk * chunk_size, ...)) of row i / chunks. With one chunk
// per row it finishes the row; otherwise it writes its state to partial[i] for kl_merge_chunks_kernel.
template <typename T, typename A>
__global__ void kl_forward_chunk_kernel(const T* __restrict__ student, const T* __restrict__ teacher, int64_t C,
                                        int64_t chunks, int64_t chunk_size, A inv_tau,
                                        State<A>* __restrict__ partial, A* __restrict__ kl, A* __restrict__ stats_s,
                                        A* __restrict__ stats_t) {
  __shared__ State<A> warp_states[kWarps];
  const int64_t row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t first = chunk * chunk_size, end = min(C, first + chunk_size);
  auto state =
      warp_merge(fold(student + row * C, teacher + row * C, first + threadIdx.x, end, kThreads, inv_tau), inv_tau);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  if (warp != 0) return;
  state = warp_merge(lane < kWarps ? warp_states[lane] : State<A>::empty(), inv_tau);
  if (lane != 0) return;
  if (chunks == 1) state.finish(inv_tau, kl + row, stats_s + 2 * row, stats_t + 4 * row);
  else partial[blockIdx.x] = state;
}

// A warp per row merges its chunks' states: lane j folds chunks j, j + 32, ... in order, then the warp's tree.
template <typename A>
__global__ void kl_merge_chunks_kernel(const State<A>* __restrict__ partial, int64_t B, int64_t chunks, A inv_tau,
                                       A* __restrict__ kl, A* __restrict__ stats_s, A* __restrict__ stats_t) {
  const int lane = threadIdx.x & 31;
  const int64_t row = warp_row();
  if (row >= B) return;
  auto state = State<A>::empty();
  for (int64_t j = lane; j < chunks; j += 32) state.merge(partial[row * chunks + j], inv_tau);
  state = warp_merge(state, inv_tau);
  if (lane == 0) state.finish(inv_tau, kl + row, stats_s + 2 * row, stats_t + 4 * row);
}

// The gradients that kStudent / kTeacher ask for (a frozen teacher's is neither computed nor written), rows of fewer
// than kWarpRowMin classes: a thread per element (a warp per row would leave most lanes idle).
template <bool kStudent, bool kTeacher, typename T, typename A>
__global__ void kl_backward_kernel(const A* __restrict__ grad_rows, const T* __restrict__ student,
                                   const T* __restrict__ teacher, const A* __restrict__ stats_s,
                                   const A* __restrict__ stats_t, int64_t B, int64_t C, A inv_tau,
                                   T* __restrict__ grad_s, T* __restrict__ grad_t) {
  const int64_t n = B * C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / C;
    const A scale = grad_rows[b] * inv_tau;
    A gs, gt;
    kl_gradients<kStudent, kTeacher>(load<A>(teacher + i), load<A>(student + i), inv_tau, stats_s + 2 * b,
                                     stats_t + 4 * b, scale, Base2Exp{}, gs, gt);
    if constexpr (kStudent) store(grad_s + i, gs);
    if constexpr (kTeacher) store(grad_t + i, gt);
  }
}

// The gradients of the classes first, first + stride, ... below end of one row, the row's statistics and scale held
// in registers (read per element, they and the row's index cost more instructions than the gradients themselves).
template <bool kStudent, bool kTeacher, typename T, typename A>
__device__ __forceinline__ void row_gradients(const A* __restrict__ grad_rows, const T* __restrict__ student,
                                              const T* __restrict__ teacher, const A* __restrict__ stats_s,
                                              const A* __restrict__ stats_t, int64_t row, int64_t C, int64_t first,
                                              int64_t end, int stride, A inv_tau, T* __restrict__ grad_s,
                                              T* __restrict__ grad_t) {
  const A scale = grad_rows[row] * inv_tau;
  const A row_s[2] = {stats_s[2 * row], stats_s[2 * row + 1]};
  const A row_t[4] = {stats_t[4 * row], stats_t[4 * row + 1], stats_t[4 * row + 2], stats_t[4 * row + 3]};
  const int64_t offset = row * C;
  for_classes<A>(student + offset, teacher + offset, first, end, stride, [&](int64_t c, A x, A y) {
    A gs, gt;
    kl_gradients<kStudent, kTeacher>(x, y, inv_tau, row_s, row_t, scale, Base2Exp{}, gs, gt);
    if constexpr (kStudent) store(grad_s + offset + c, gs);
    if constexpr (kTeacher) store(grad_t + offset + c, gt);
  });
}

// Rows of kWarpRowMin to kWarpRowMax classes: a warp per row, as kl_forward_warp_kernel reads them.
template <bool kStudent, bool kTeacher, typename T, typename A>
__global__ void kl_backward_warp_kernel(const A* __restrict__ grad_rows, const T* __restrict__ student,
                                        const T* __restrict__ teacher, const A* __restrict__ stats_s,
                                        const A* __restrict__ stats_t, int64_t B, int64_t C, A inv_tau,
                                        T* __restrict__ grad_s, T* __restrict__ grad_t) {
  const int64_t row = warp_row();
  if (row >= B) return;
  row_gradients<kStudent, kTeacher>(grad_rows, student, teacher, stats_s, stats_t, row, C, threadIdx.x & 31, C, 32,
                                    inv_tau, grad_s, grad_t);
}

// Longer rows: block i writes the gradients of chunk i % chunks of row i / chunks, as kl_forward_chunk_kernel reads it.
template <bool kStudent, bool kTeacher, typename T, typename A>
__global__ void kl_backward_chunk_kernel(const A* __restrict__ grad_rows, const T* __restrict__ student,
                                         const T* __restrict__ teacher, const A* __restrict__ stats_s,
                                         const A* __restrict__ stats_t, int64_t C, int64_t chunks, int64_t chunk_size,
                                         A inv_tau, T* __restrict__ grad_s, T* __restrict__ grad_t) {
  const int64_t row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t first = chunk * chunk_size, end = min(C, first + chunk_size);
  row_gradients<kStudent, kTeacher>(grad_rows, student, teacher, stats_s, stats_t, row, C, first + threadIdx.x, end,
                                    kThreads, inv_tau, grad_s, grad_t);
}

// How a row of C classes is cut for kl_forward_chunk_kernel and kl_backward_chunk_kernel: (chunks, classes per chunk).
void chunking(int64_t B, int64_t C, int64_t& chunks, int64_t& chunk_size) {
  const int64_t most = (C + kClassesPerChunk - 1) / kClassesPerChunk;
  const int64_t wanted = (kTargetBlocks + B - 1) / B;
  chunks = wanted < most ? wanted : most;
  if (chunks < 1) chunks = 1;
  chunk_size = (C + chunks - 1) / chunks;
  chunks = (C + chunk_size - 1) / chunk_size;
}

}  // namespace

int64_t kl_forward_workspace_bytes(DType dtype, int64_t B, int64_t C) {
  if (C <= kWarpRowMax) return 0;
  int64_t chunks, chunk_size;
  chunking(B, C, chunks, chunk_size);
  if (chunks == 1) return 0;
  return B * chunks * (dtype == DType::Float64 ? sizeof(State<double>) : sizeof(State<float>));
}

int launch_kl_forward(DType dtype, const void* student, const void* teacher, int64_t B, int64_t C, double inv_tau,
                      void* kl, void* stats_s, void* stats_t, void* workspace, void* stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    const auto s = static_cast<const T*>(student);
    const auto t = static_cast<const T*>(teacher);
    const auto cuda_stream = static_cast<cudaStream_t>(stream);
    const auto out = static_cast<A*>(kl);
    const auto out_s = static_cast<A*>(stats_s);
    const auto out_t = static_cast<A*>(stats_t);
    const auto tau = static_cast<A>(inv_tau);
    const unsigned int row_blocks = warp_row_blocks(B);
    if (C <= kWarpRowMax) {
      kl_forward_warp_kernel<T, A><<<row_blocks, kThreads, 0, cuda_stream>>>(s, t, B, C, tau, out, out_s, out_t);
      return static_cast<int>(cudaGetLastError());
    }
    int64_t chunks, chunk_size;
    chunking(B, C, chunks, chunk_size);
    const auto partial = static_cast<State<A>*>(workspace);
    kl_forward_chunk_kernel<T, A><<<static_cast<unsigned int>(B * chunks), kThreads, 0, cuda_stream>>>(
        s, t, C, chunks, chunk_size, tau, partial, out, out_s, out_t);
    if (chunks > 1) {
      kl_merge_chunks_kernel<A><<<row_blocks, kThreads, 0, cuda_stream>>>(partial, B, chunks, tau, out, out_s,
                                                                            out_t);
    }
    return static_cast<int>(cudaGetLastError());
  });
}

int launch_kl_backward(DType dtype, const void* grad_rows, const void* student, const void* teacher,
                       const void* stats_s, const void* stats_t, int64_t B, int64_t C, double inv_tau, void* grad_s,
                       void* grad_t, void* stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    const auto g = static_cast<const A*>(grad_rows);
    const auto s = static_cast<const T*>(student);
    const auto t = static_cast<const T*>(teacher);
    const auto row_s = static_cast<const A*>(stats_s);
    const auto row_t = static_cast<const A*>(stats_t);
    const auto tau = static_cast<A>(inv_tau);
    const auto out_s = static_cast<T*>(grad_s);
    const auto out_t = static_cast<T*>(grad_t);
    const auto cuda_stream = static_cast<cudaStream_t>(stream);
    // kStudent, kTeacher as std::bool_constant, so that each pair selects its kernels at compile time
    auto launch = [&](auto student_wanted, auto teacher_wanted) {
      constexpr bool kStudent = decltype(student_wanted)::value, kTeacher = decltype(teacher_wanted)::value;
      if (C < kWarpRowMin) {
        kl_backward_kernel<kStudent, kTeacher, T, A><<<blocks_for(B * C, kThreads), kThreads, 0, cuda_stream>>>(
            g, s, t, row_s, row_t, B, C, tau, out_s, out_t);
        return;
      }
      if (C <= kWarpRowMax) {
        kl_backward_warp_kernel<kStudent, kTeacher, T, A><<<warp_row_blocks(B), kThreads, 0, cuda_stream>>>(
            g, s, t, row_s, row_t, B, C, tau, out_s, out_t);
        return;
      }
      int64_t chunks, chunk_size;
      chunking(B, C, chunks, chunk_size);
      kl_backward_chunk_kernel<kStudent, kTeacher, T, A>
          <<<static_cast<unsigned int>(B * chunks), kThreads, 0, cuda_stream>>>(g, s, t, row_s, row_t, C, chunks,
                                                                                  chunk_size, tau, out_s, out_t);
    };
    if (grad_s != nullptr && grad_t != nullptr) launch(std::true_type{}, std::true_type{});
    else if (grad_s != nullptr) launch(std::true_type{}, std::false_type{});
    else if (grad_t != nullptr) launch(std::false_type{}, std::true_type{});
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace zskt::cuda
