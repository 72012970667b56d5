// KL divergence between softened class distributions, CUDA kernels.
// Forward: one warp per row (warp shuffles only, so the reduction order is fixed), reading each row three times (its
// maximum, its sum of exponentials, the KL) so that the KL is formed from the same per-class log-probabilities as the
// backward's (see RESULTS.md on one-sweep forwards and the teacher gradient). Backward: one thread per element.
#include <cmath>

#include "common.cuh"

namespace zskt::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

// Row statistics of x / temperature: the maximum m and log sum_c exp(x_c - m), kept apart so that
// log p_c = (x_c - m) - log-sum stays exact for the largest logits when the softmax saturates.
template <typename T, typename A>
__device__ void row_stats(const T* row, int64_t C, A inv_tau, int lane, A& m, A& log_sum) {
  m = -INFINITY;
  for (int64_t c = lane; c < C; c += 32) m = max(m, load<A>(row + c) * inv_tau);
  m = warp_max(m);
  log_sum = 0;
  if (isinf(m)) return;  // all -inf (or a +inf): the caller sees a non-finite value
  A sum = 0;
  for (int64_t c = lane; c < C; c += 32) sum += exp(load<A>(row + c) * inv_tau - m);
  log_sum = log(warp_sum(sum));
}

template <typename T, typename A>
__device__ A log_prob(const T* x, A inv_tau, A m, A log_sum) {
  return (load<A>(x) * inv_tau - m) - log_sum;
}

template <typename T, typename A>
__global__ void kl_forward_kernel(const T* __restrict__ student, const T* __restrict__ teacher, int64_t B, int64_t C,
                                  A inv_tau, A* __restrict__ kl, A* __restrict__ stats_s, A* __restrict__ stats_t) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= B) return;  // whole warps leave together
  const T* s = student + row * C;
  const T* t = teacher + row * C;
  A ms, ls, mt, lt;
  row_stats(s, C, inv_tau, lane, ms, ls);
  row_stats(t, C, inv_tau, lane, mt, lt);
  A sum = 0;
  for (int64_t c = lane; c < C; c += 32) {
    const A log_pt = log_prob(t + c, inv_tau, mt, lt);
    const A log_ps = log_prob(s + c, inv_tau, ms, ls);
    const A pt = exp(log_pt);
    sum += pt == A(0) ? A(0) : pt * (log_pt - log_ps);  // p_t log p_t = 0 where p_t underflows
  }
  sum = warp_sum(sum);
  if (lane == 0) {
    kl[row] = sum;
    stats_s[2 * row] = ms;
    stats_s[2 * row + 1] = ls;
    stats_t[2 * row] = mt;
    stats_t[2 * row + 1] = lt;
  }
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

int launch_kl_forward(DType dtype, const void* student, const void* teacher, int64_t B, int64_t C, double inv_tau,
                      void* kl, void* stats_s, void* stats_t, void* stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    const unsigned int blocks = static_cast<unsigned int>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
    kl_forward_kernel<T, A><<<blocks, 32 * kWarpsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(student), static_cast<const T*>(teacher), B, C, static_cast<A>(inv_tau),
        static_cast<A*>(kl), static_cast<A*>(stats_s), static_cast<A*>(stats_t));
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
