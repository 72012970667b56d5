// Batch-norm statistics of a feature map (the input of a BatchNorm layer): the per-channel mean and biased variance
// over (N, H, W), and the gradient of a function of them with respect to the map. The prior of DeepInversion and DFQ
// compares these with the layer's running statistics.
//
// Forward: one pass over the map. Each channel's values are summed, and their squares, after subtracting one of the
// channel's own values (a pivot): the shifted sums keep the variance free of the cancellation that plain sums of
// squares suffer when the mean is large against the spread. The sums are kept in double for every input dtype.
// Backward: one pass, d/dx = g_mean / N + g_var * 2 (x - mean) / N.
// Parallel over channels (forward) and over rows (backward): every reduction has one fixed order, so results do not
// depend on the thread count. NCHW-contiguous and channels_last inputs are read in place; other layouts are copied to
// NCHW first.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "convert.h"
#include "multiversion.h"

namespace zskt {
namespace {

constexpr int64_t kChannelBlock = 16;  // channels_last: channels one task sweeps together (a 64-byte line of floats)

struct Map {
  at::Tensor tensor;  // NCHW-contiguous or channels_last-contiguous
  bool channels_last;
  int64_t B, C, HW;
};

Map as_readable(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.is_contiguous()) return {x, false, B, C, HW};
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {x, true, B, C, HW};
  return {x.contiguous(), false, B, C, HW};
}

// The value of one element as the kernels compute with it (bfloat16 through its bits, see gradient_row).
template <typename scalar_t>
ZSKT_INLINE_INTO_CLONE inline double value_of(const scalar_t& v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return static_cast<double>(float_of_bf16_bits(reinterpret_cast<const uint16_t&>(v)));
  } else {
    return static_cast<double>(static_cast<at::opmath_type<scalar_t>>(v));
  }
}

// Adds v - pivot and its square to (s1, s2) for the n values of one row.
template <typename scalar_t>
ZSKT_MULTIVERSION void shifted_sums(const scalar_t* __restrict__ row, int64_t n, double pivot, double& s1, double& s2) {
  double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < n; ++i) {
    const double d = value_of(row[i]) - pivot;
    a += d;
    b += d * d;
  }
  s1 += a;
  s2 += b;
}

template <typename acc_t>
void finish(double s1, double s2, double pivot, double n, acc_t* mean, acc_t* var) {
  const double shift = s1 / n;
  *mean = static_cast<acc_t>(pivot + shift);
  *var = static_cast<acc_t>(std::max(s2 / n - shift * shift, 0.0));
}

template <typename scalar_t, typename acc_t>
void statistics_planar(const scalar_t* x, int64_t B, int64_t C, int64_t HW, acc_t* mean, acc_t* var) {
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const double pivot = static_cast<double>(static_cast<at::opmath_type<scalar_t>>(x[c * HW]));
      double s1 = 0, s2 = 0;
      for (int64_t b = 0; b < B; ++b) shifted_sums(x + (b * C + c) * HW, HW, pivot, s1, s2);
      finish(s1, s2, pivot, static_cast<double>(B * HW), mean + c, var + c);
    }
  });
}

template <typename scalar_t, typename acc_t>
void statistics_channels_last(const scalar_t* x, int64_t pixels, int64_t C, acc_t* mean, acc_t* var) {
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    double pivot[kChannelBlock], s1[kChannelBlock], s2[kChannelBlock];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kChannelBlock, width = std::min(kChannelBlock, C - c0);
      for (int64_t j = 0; j < width; ++j) {
        pivot[j] = static_cast<double>(static_cast<at::opmath_type<scalar_t>>(x[c0 + j]));
        s1[j] = s2[j] = 0;
      }
      for (int64_t p = 0; p < pixels; ++p) {
        const scalar_t* px = x + p * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) {
          const double d = static_cast<double>(static_cast<at::opmath_type<scalar_t>>(px[j])) - pivot[j];
          s1[j] += d;
          s2[j] += d * d;
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        finish(s1[j], s2[j], pivot[j], static_cast<double>(pixels), mean + c0 + j, var + c0 + j);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> bn_statistics_forward_cpu(const at::Tensor& input) {
  check_features(input, "bn_statistics input");
  const Map map = as_readable(input);
  const auto acc = accumulation_type(input);
  auto mean = at::empty({map.C}, input.options().dtype(acc));
  auto var = at::empty({map.C}, input.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "bn_statistics_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto* x = map.tensor.const_data_ptr<scalar_t>();
    if (map.channels_last) {
      statistics_channels_last(x, map.B * map.HW, map.C, mean.mutable_data_ptr<acc_t>(),
                               var.mutable_data_ptr<acc_t>());
    } else {
      statistics_planar(x, map.B, map.C, map.HW, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>());
    }
  });
  return {mean, var};
}

// out[i] = a + k * (x[i] - m) for the n values of a row: a = g_mean / N, k = 2 g_var / N.
template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void gradient_row(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t n, acc_t a,
                                    acc_t k, acc_t m) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // bfloat16 through its bits (convert.h): c10's per-element conversions keep the loop from vectorising.
    const auto* xb = reinterpret_cast<const uint16_t*>(x);
    auto* ob = reinterpret_cast<uint16_t*>(out);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) ob[i] = bf16_bits_of(a + k * (float_of_bf16_bits(xb[i]) - m));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      out[i] = static_cast<scalar_t>(a + k * (static_cast<acc_t>(x[i]) - m));
    }
  }
}

// out[c] = a[c] + k[c] * (x[c] - m[c]) for the C channels of one pixel of a channels_last map.
template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void gradient_pixel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t C,
                                      const acc_t* __restrict__ a, const acc_t* __restrict__ k,
                                      const acc_t* __restrict__ m) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(a[c] + k[c] * (static_cast<acc_t>(x[c]) - m[c]));
}

at::Tensor bn_statistics_backward_cpu(const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& input,
                                      const at::Tensor& mean) {
  check_features(input, "bn_statistics input");
  const Map map = as_readable(input);
  const auto acc = accumulation_type(input);
  TORCH_CHECK(grad_mean.numel() == map.C && grad_var.numel() == map.C && mean.numel() == map.C,
              "zskt_fast: bn_statistics_backward expects [C] grad_mean, grad_var and mean for C = ", map.C, ", got ",
              grad_mean.sizes(), ", ", grad_var.sizes(), " and ", mean.sizes());
  const auto g_mean = grad_mean.to(acc).contiguous(), g_var = grad_var.to(acc).contiguous();
  const auto m = mean.to(acc).contiguous();
  auto grad = at::empty_like(map.tensor);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "bn_statistics_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto* x = map.tensor.const_data_ptr<scalar_t>();
    auto* out = grad.mutable_data_ptr<scalar_t>();
    const auto* gm = g_mean.const_data_ptr<acc_t>();
    const auto* gv = g_var.const_data_ptr<acc_t>();
    const auto* mu = m.const_data_ptr<acc_t>();
    const acc_t inv_n = acc_t(1) / static_cast<acc_t>(map.B * map.HW);
    if (map.channels_last) {
      // Per channel: out = a_c + k_c (x - m_c), coefficients precomputed once.
      std::vector<acc_t> a(map.C), k(map.C);
      for (int64_t c = 0; c < map.C; ++c) {
        a[c] = gm[c] * inv_n;
        k[c] = 2 * gv[c] * inv_n;
      }
      at::parallel_for(0, map.B * map.HW, 256, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          gradient_pixel(x + p * map.C, out + p * map.C, map.C, a.data(), k.data(), mu);
        }
      });
    } else {
      at::parallel_for(0, map.B * map.C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t c = row % map.C;
          gradient_row(x + row * map.HW, out + row * map.HW, map.HW, gm[c] * inv_n, 2 * gv[c] * inv_n, mu[c]);
        }
      });
    }
  });
  // The gradient in the input's own layout (a map copied to NCHW gives its gradient back in the original strides).
  if (grad.strides() != input.strides()) return at::empty_like(input).copy_(grad);
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(zskt_fast, CPU, m) {
  m.impl("bn_statistics_forward", &bn_statistics_forward_cpu);
  m.impl("bn_statistics_backward", &bn_statistics_backward_cpu);
}

}  // namespace zskt
