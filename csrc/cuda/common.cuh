// Shared device helpers: loads/stores in every supported dtype with float (or double) accumulation, and
// deterministic warp and block reductions (a fixed shuffle tree, no atomics).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "launchers.h"

namespace zskt::cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A> __device__ __forceinline__ A load(const float* p) { return static_cast<A>(*p); }
template <typename A> __device__ __forceinline__ A load(const double* p) { return static_cast<A>(*p); }
template <typename A> __device__ __forceinline__ A load(const __half* p) { return static_cast<A>(__half2float(*p)); }
template <typename A> __device__ __forceinline__ A load(const __nv_bfloat16* p) {
  return static_cast<A>(__bfloat162float(*p));
}

template <typename T> __device__ __forceinline__ T cast_to(float v);
template <> __device__ __forceinline__ float cast_to<float>(float v) { return v; }
template <> __device__ __forceinline__ __half cast_to<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 cast_to<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T, typename A> __device__ __forceinline__ void store(T* p, A v) { *p = cast_to<T>(v); }
template <> __device__ __forceinline__ void store<double, double>(double* p, double v) { *p = v; }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <typename A> __device__ A block_sum(A v, A* shared /* [32] */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : A(0);
  return warp_sum(v);
}

// Calls f(dtype-specific pointer type) for the runtime dtype.
template <typename F> int dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(static_cast<float*>(nullptr));
    case DType::Float64: return f(static_cast<double*>(nullptr));
    case DType::Float16: return f(static_cast<__half*>(nullptr));
    case DType::BFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

inline unsigned int blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 32) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

}  // namespace zskt::cuda
