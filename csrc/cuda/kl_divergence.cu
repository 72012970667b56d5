// KL divergence between softened class distributions, CUDA kernels.
//
// Forward: online softmax, so that each logit is read once. Every thread folds its elements into a running state
// (both row maxima, both sums of exponentials past them and the KL's weighted sum), and states are merged by a fixed
// tree: within a warp by shuffles, across warps through shared memory. Rows of up to kWarpRowMax classes take a warp
// each; longer rows are cut into chunks of kChunk classes, a block per chunk, whose states a second kernel merges per
// row in chunk order. No atomics: results do not depend on scheduling. Backward: one thread per element.
#include <cmath>

#include "common.cuh"

namespace zskt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kWarpRowMax = 4096;  // rows up to this long: a warp per row
constexpr int64_t kChunk = 16384;      // longer rows: a block per chunk of this many classes

// The forward's running state over a set of classes, for u = teacher logit / T and v = student logit / T:
//   m_t, m_s   maxima of u and v
//   sum_t      sum exp(u - m_t); sum_s likewise
//   w          sum over classes with finite v of e (a - b), e = exp(a), a = u - m_t, b = v - m_s
//   infinite   a class where the teacher has mass and the student none (v = -inf): the KL is +inf
// so that KL = w / sum_t - log sum_t + log sum_s. Kept relative to the maxima so that log p = (x / T - m) - log-sum
// stays exact for the largest logits when the softmax saturates.
template <typename A>
struct KlState {
  A m_t, m_s, sum_t, sum_s, w;
  bool infinite;

  __device__ static KlState empty() { return {-INFINITY, -INFINITY, A(0), A(0), A(0), false}; }

  // The same sums taken relative to larger maxima. A side with nothing summed yet has nothing to rescale; while the
  // student's maximum is -inf no class has entered w.
  __device__ void rescale(A new_m_t, A new_m_s) {
    if (sum_t > A(0)) {
      const A factor = exp(m_t - new_m_t);
      if (m_s > -INFINITY) w = factor * (w + ((m_t - new_m_t) - (m_s - new_m_s)) * sum_t);
      sum_t *= factor;
    }
    if (sum_s > A(0)) sum_s *= exp(m_s - new_m_s);
    m_t = new_m_t;
    m_s = new_m_s;
  }

  __device__ void add(A u, A v) {
    const A new_m_t = max(m_t, u), new_m_s = max(m_s, v);
    if (new_m_t != m_t || new_m_s != m_s) rescale(new_m_t, new_m_s);  // rare once a few classes are in
    if (v != -INFINITY) sum_s += exp(v - m_s);  // (NaN logits are summed: the KL becomes NaN)
    if (u != -INFINITY) {
      const A a = u - m_t, e = exp(a);
      sum_t += e;
      if (e > A(0)) {  // p_t log p_t = 0 where p_t underflows, as F.kl_div's xlogy
        if (v != -INFINITY) w += e * (a - (v - m_s));
        else infinite = true;
      }
    }
  }

  __device__ void merge(KlState other) {
    const A new_m_t = max(m_t, other.m_t), new_m_s = max(m_s, other.m_s);
    rescale(new_m_t, new_m_s);
    other.rescale(new_m_t, new_m_s);
    sum_t += other.sum_t;
    sum_s += other.sum_s;
    w += other.w;
    infinite = infinite || other.infinite;
  }

  // The row's KL and statistics; all -inf (or a +inf) in a row gives a NaN KL, so that the caller sees it.
  __device__ void finish(A* kl, A* stats_s, A* stats_t) const {
    const bool finite = !isinf(m_s) && !isinf(m_t);
    const A log_sum_s = finite ? log(sum_s) : A(0), log_sum_t = finite ? log(sum_t) : A(0);
    *kl = !finite ? A(NAN) : (infinite ? A(INFINITY) : (w / sum_t - log_sum_t) + log_sum_s);
    stats_s[0] = m_s;
    stats_s[1] = log_sum_s;
    stats_t[0] = m_t;
    stats_t[1] = log_sum_t;
  }
};

template <typename A>
__device__ KlState<A> shuffle(const KlState<A>& s, int lane_mask) {
  return {__shfl_xor_sync(0xffffffffu, s.m_t, lane_mask), __shfl_xor_sync(0xffffffffu, s.m_s, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.sum_t, lane_mask), __shfl_xor_sync(0xffffffffu, s.sum_s, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.w, lane_mask),
          static_cast<bool>(__shfl_xor_sync(0xffffffffu, static_cast<int>(s.infinite), lane_mask))};
}

// Every lane ends with a merged state; lane 0's is the one used, so the order of merging is fixed.
template <typename A>
__device__ KlState<A> warp_merge(KlState<A> s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) s.merge(shuffle(s, offset));
  return s;
}

template <typename T, typename A>
__device__ KlState<A> fold(const T* s, const T* t, int64_t first, int64_t end, int stride, A inv_tau) {
  auto state = KlState<A>::empty();
  for (int64_t c = first; c < end; c += stride) state.add(load<A>(t + c) * inv_tau, load<A>(s + c) * inv_tau);
  return state;
}

// Rows of up to kWarpRowMax classes: a warp per row.
template <typename T, typename A>
__global__ void kl_forward_warp_kernel(const T* __restrict__ student, const T* __restrict__ teacher, int64_t B,
                                       int64_t C, A inv_tau, A* __restrict__ kl, A* __restrict__ stats_s,
                                       A* __restrict__ stats_t) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= B) return;  // whole warps leave together
  const auto state = warp_merge(fold(student + row * C, teacher + row * C, lane, C, 32, inv_tau));
  if (lane == 0) state.finish(kl + row, stats_s + 2 * row, stats_t + 2 * row);
}

// Longer rows: block i handles chunk i % chunks of row i / chunks. With one chunk per row it finishes the row;
// otherwise it writes its state to partial[i] for kl_merge_chunks_kernel.
template <typename T, typename A>
__global__ void kl_forward_chunk_kernel(const T* __restrict__ student, const T* __restrict__ teacher, int64_t C,
                                        int64_t chunks, A inv_tau, KlState<A>* __restrict__ partial,
                                        A* __restrict__ kl, A* __restrict__ stats_s, A* __restrict__ stats_t) {
  __shared__ KlState<A> warp_states[kWarps];
  const int64_t row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t first = chunk * kChunk, end = min(C, first + kChunk);
  auto state = warp_merge(fold(student + row * C, teacher + row * C, first + threadIdx.x, end, kThreads, inv_tau));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  if (warp != 0) return;
  state = lane < kWarps ? warp_states[lane] : KlState<A>::empty();
  state = warp_merge(state);
  if (lane != 0) return;
  if (chunks == 1) state.finish(kl + row, stats_s + 2 * row, stats_t + 2 * row);
  else partial[blockIdx.x] = state;
}

// A warp per row merges its chunks' states: lane j folds chunks j, j + 32, ... in order, then the warp's tree.
template <typename A>
__global__ void kl_merge_chunks_kernel(const KlState<A>* __restrict__ partial, int64_t B, int64_t chunks,
                                       A* __restrict__ kl, A* __restrict__ stats_s, A* __restrict__ stats_t) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= B) return;
  auto state = KlState<A>::empty();
  for (int64_t j = lane; j < chunks; j += 32) state.merge(partial[row * chunks + j]);
  state = warp_merge(state);
  if (lane == 0) state.finish(kl + row, stats_s + 2 * row, stats_t + 2 * row);
}

template <typename T, typename A>
__device__ A log_prob(const T* x, A inv_tau, A m, A log_sum) {
  return (load<A>(x) * inv_tau - m) - log_sum;
}

// The gradients that kStudent / kTeacher ask for (a frozen teacher's is neither computed nor written).
template <bool kStudent, bool kTeacher, typename T, typename A>
__global__ void kl_backward_kernel(const A* __restrict__ grad_rows, const T* __restrict__ student,
                                   const T* __restrict__ teacher, const A* __restrict__ stats_s,
                                   const A* __restrict__ stats_t, const A* __restrict__ kl, int64_t B, int64_t C,
                                   A inv_tau, T* __restrict__ grad_s, T* __restrict__ grad_t) {
  const int64_t n = B * C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / C;
    const A scale = grad_rows[b] * inv_tau;
    const A log_pt = log_prob(teacher + i, inv_tau, stats_t[2 * b], stats_t[2 * b + 1]);
    const A log_ps = log_prob(student + i, inv_tau, stats_s[2 * b], stats_s[2 * b + 1]);
    const A pt = exp(log_pt);
    if constexpr (kStudent) store(grad_s + i, scale * (exp(log_ps) - pt));
    if constexpr (kTeacher) store(grad_t + i, pt == A(0) ? A(0) : scale * pt * ((log_pt - log_ps) - kl[b]));
  }
}

}  // namespace

int64_t kl_forward_workspace_bytes(DType dtype, int64_t B, int64_t C) {
  if (C <= kWarpRowMax) return 0;
  const int64_t chunks = (C + kChunk - 1) / kChunk;
  if (chunks == 1) return 0;
  return B * chunks * (dtype == DType::Float64 ? sizeof(KlState<double>) : sizeof(KlState<float>));
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
    const unsigned int row_blocks = static_cast<unsigned int>((B + kWarps - 1) / kWarps);
    if (C <= kWarpRowMax) {
      kl_forward_warp_kernel<T, A><<<row_blocks, kThreads, 0, cuda_stream>>>(s, t, B, C, static_cast<A>(inv_tau), out,
                                                                              out_s, out_t);
      return static_cast<int>(cudaGetLastError());
    }
    const int64_t chunks = (C + kChunk - 1) / kChunk;
    const auto partial = static_cast<KlState<A>*>(workspace);
    kl_forward_chunk_kernel<T, A><<<static_cast<unsigned int>(B * chunks), kThreads, 0, cuda_stream>>>(
        s, t, C, chunks, static_cast<A>(inv_tau), partial, out, out_s, out_t);
    if (chunks > 1) {
      kl_merge_chunks_kernel<A><<<row_blocks, kThreads, 0, cuda_stream>>>(partial, B, chunks, out, out_s, out_t);
    }
    return static_cast<int>(cudaGetLastError());
  });
}

int launch_kl_backward(DType dtype, const void* grad_rows, const void* student, const void* teacher,
                       const void* stats_s, const void* stats_t, const void* kl, int64_t B, int64_t C, double inv_tau,
                       void* grad_s, void* grad_t, void* stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    constexpr int threads = 256;
    auto launch = [&](auto kernel) {
      kernel<<<blocks_for(B * C, threads), threads, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const A*>(grad_rows), static_cast<const T*>(student), static_cast<const T*>(teacher),
          static_cast<const A*>(stats_s), static_cast<const A*>(stats_t), static_cast<const A*>(kl), B, C,
          static_cast<A>(inv_tau), static_cast<T*>(grad_s), static_cast<T*>(grad_t));
    };
    if (grad_s != nullptr && grad_t != nullptr) launch(kl_backward_kernel<true, true, T, A>);
    else if (grad_s != nullptr) launch(kl_backward_kernel<true, false, T, A>);
    else if (grad_t != nullptr) launch(kl_backward_kernel<false, true, T, A>);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace zskt::cuda
