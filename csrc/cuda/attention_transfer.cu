// Attention transfer, CUDA kernels, for NCHW-contiguous features.
// Forward, two launches per layer: (1) channel means of squares of both sides, one thread per (sample, position),
// coalesced along H*W; (2) one block per sample: both norms, the normalised maps and the squared difference.
// Backward, one launch per side: blocks over (channel chunk, sample); each block recomputes the sample's <q, g_q>
// from the [H*W] maps (cheap next to its chunk of features) and writes its chunk of the gradient.
// No atomics: every reduction has a fixed order.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace zskt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr double kNormEps = 1e-12;  // F.normalize's default

template <typename T, typename A>
__global__ void channel_mean_of_squares_kernel(const T* __restrict__ student, int64_t C_s,
                                               const T* __restrict__ teacher, int64_t C_t, int64_t B, int64_t HW,
                                               A* __restrict__ a_s, A* __restrict__ a_t) {
  const bool is_teacher = blockIdx.y == 1;
  const T* x = is_teacher ? teacher : student;
  const int64_t C = is_teacher ? C_t : C_s;
  A* a = is_teacher ? a_t : a_s;
  const A inv_c = A(1) / static_cast<A>(C);
  const int64_t n = B * HW;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / HW, hw = i - b * HW;
    const T* p = x + b * C * HW + hw;
    A sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      const A v = load<A>(p + c * HW);
      sum += v * v;
    }
    a[i] = sum * inv_c;
  }
}

template <typename A>
__global__ void normalise_and_compare_kernel(int64_t HW, A* __restrict__ q_s, A* __restrict__ q_t,
                                             A* __restrict__ norm_s, A* __restrict__ norm_t,
                                             A* __restrict__ sq_diff) {
  __shared__ A shared[32];
  const int64_t b = blockIdx.x;
  A* as = q_s + b * HW;
  A* at = q_t + b * HW;
  A ss = 0, st = 0;
  for (int64_t hw = threadIdx.x; hw < HW; hw += blockDim.x) {
    ss += as[hw] * as[hw];
    st += at[hw] * at[hw];
  }
  const A ns = sqrt(block_sum(ss, shared));
  const A nt = sqrt(block_sum(st, shared));
  const A inv_s = A(1) / max(ns, static_cast<A>(kNormEps));
  const A inv_t = A(1) / max(nt, static_cast<A>(kNormEps));
  A d = 0;
  for (int64_t hw = threadIdx.x; hw < HW; hw += blockDim.x) {
    const A qs = as[hw] * inv_s, qt = at[hw] * inv_t;
    as[hw] = qs;
    at[hw] = qt;
    d += (qs - qt) * (qs - qt);
  }
  d = block_sum(d, shared);
  if (threadIdx.x == 0) {
    norm_s[b] = ns;
    norm_t[b] = nt;
    sq_diff[b] = d;
  }
}

template <typename T, typename A>
__global__ void attention_gradient_kernel(const A* __restrict__ grad_sq_diff, const T* __restrict__ x,
                                          const A* __restrict__ q, const A* __restrict__ q_other,
                                          const A* __restrict__ norm, int64_t C, int64_t HW,
                                          int64_t channels_per_block, T* __restrict__ out) {
  __shared__ A shared[32];
  const int64_t b = blockIdx.y;
  const A* qb = q + b * HW;
  const A* qob = q_other + b * HW;
  const A two_g = 2 * grad_sq_diff[b];
  A dot = 0;
  for (int64_t hw = threadIdx.x; hw < HW; hw += blockDim.x) dot += qb[hw] * two_g * (qb[hw] - qob[hw]);
  dot = block_sum(dot, shared);
  const A eps = static_cast<A>(kNormEps);
  const bool projected = norm[b] > eps;
  if (!projected) dot = 0;
  const A scale = (A(2) / static_cast<A>(C)) / (projected ? norm[b] : eps);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * channels_per_block;
  const int64_t c1 = min(C, c0 + channels_per_block);
  const int64_t begin = (b * C + c0) * HW, end = (b * C + c1) * HW;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int64_t hw = (i - begin) % HW;
    const A ga = (two_g * (qb[hw] - qob[hw]) - qb[hw] * dot) * scale;
    store(out + i, ga * load<A>(x + i));
  }
}

}  // namespace

int launch_at_forward(DType dtype, const void* student, int64_t C_s, const void* teacher, int64_t C_t, int64_t B,
                      int64_t HW, void* q_s, void* q_t, void* norm_s, void* norm_t, void* sq_diff, void* stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    const auto s = static_cast<cudaStream_t>(stream);
    const dim3 grid(blocks_for(B * HW, kThreads), 2);
    channel_mean_of_squares_kernel<T, A><<<grid, kThreads, 0, s>>>(
        static_cast<const T*>(student), C_s, static_cast<const T*>(teacher), C_t, B, HW, static_cast<A*>(q_s),
        static_cast<A*>(q_t));
    normalise_and_compare_kernel<A><<<static_cast<unsigned int>(B), kThreads, 0, s>>>(
        HW, static_cast<A*>(q_s), static_cast<A*>(q_t), static_cast<A*>(norm_s), static_cast<A*>(norm_t),
        static_cast<A*>(sq_diff));
    return static_cast<int>(cudaGetLastError());
  });
}

int launch_at_backward(DType dtype, const void* grad_sq_diff, const void* features, const void* q, const void* q_other,
                       const void* norm, int64_t B, int64_t C, int64_t HW, void* out, void* stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    // About 16K elements per block: enough work to hide the per-block dot product, enough blocks to fill the GPU.
    const int64_t channels_per_block = std::max<int64_t>(1, std::min<int64_t>(C, (16384 + HW - 1) / HW));
    const dim3 grid(static_cast<unsigned int>((C + channels_per_block - 1) / channels_per_block),
                    static_cast<unsigned int>(B));
    attention_gradient_kernel<T, A><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const A*>(grad_sq_diff), static_cast<const T*>(features), static_cast<const A*>(q),
        static_cast<const A*>(q_other), static_cast<const A*>(norm), C, HW, channels_per_block,
        static_cast<T*>(out));
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace zskt::cuda
