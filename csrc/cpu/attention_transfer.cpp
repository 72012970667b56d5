// Attention transfer (Zagoruyko & Komodakis), CPU kernel.
//
// Forward: one pass over the channels of each feature map builds the [H*W] map of channel means of squares in a
// per-sample buffer (the output row itself), then normalises it. Backward: one pass over the features writes the
// gradient. Parallel over samples, so every reduction has a fixed order and results do not depend on the thread count.
// NCHW-contiguous and channels_last inputs are read in place; any other layout is copied to NCHW first.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "convert.h"
#include "multiversion.h"

namespace zskt {
namespace {

constexpr double kNormEps = 1e-12;  // F.normalize's default

struct Features {
  at::Tensor tensor;  // NCHW-contiguous or channels_last-contiguous
  bool channels_last;
  int64_t C, HW;
};

Features as_readable(const at::Tensor& x) {
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.is_contiguous()) return {x, false, C, HW};
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {x, true, C, HW};
  return {x.contiguous(), false, C, HW};
}

// a[hw] = (1/C) sum_c x[c, hw]^2 for one sample.
template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void channel_mean_of_squares(const scalar_t* __restrict__ x, bool channels_last, int64_t C, int64_t HW,
                             acc_t* __restrict__ a) {
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  if (channels_last) {
    for (int64_t hw = 0; hw < HW; ++hw) {
      const scalar_t* px = x + hw * C;
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < C; ++c) {
        const acc_t v = static_cast<acc_t>(px[c]);
        sum += v * v;
      }
      a[hw] = sum * inv_c;
    }
  } else {
    // Four channels per sweep over a[]: a quarter of the loads and stores of a[] (and of the store-to-load
    // aliasing between a[] and rows exactly 4 KiB apart at H*W = 1024).
    int64_t c = 0;
    if (C >= 4) {
      const scalar_t *r0 = x, *r1 = x + HW, *r2 = x + 2 * HW, *r3 = x + 3 * HW;
#pragma omp simd
      for (int64_t hw = 0; hw < HW; ++hw) {
        const acc_t v0 = static_cast<acc_t>(r0[hw]), v1 = static_cast<acc_t>(r1[hw]);
        const acc_t v2 = static_cast<acc_t>(r2[hw]), v3 = static_cast<acc_t>(r3[hw]);
        a[hw] = (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
      }
      c = 4;
    } else {
      for (int64_t hw = 0; hw < HW; ++hw) a[hw] = 0;
    }
    for (; c + 4 <= C; c += 4) {
      const scalar_t *r0 = x + c * HW, *r1 = r0 + HW, *r2 = r0 + 2 * HW, *r3 = r0 + 3 * HW;
#pragma omp simd
      for (int64_t hw = 0; hw < HW; ++hw) {
        const acc_t v0 = static_cast<acc_t>(r0[hw]), v1 = static_cast<acc_t>(r1[hw]);
        const acc_t v2 = static_cast<acc_t>(r2[hw]), v3 = static_cast<acc_t>(r3[hw]);
        a[hw] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
      }
    }
    for (; c < C; ++c) {
      const scalar_t* row = x + c * HW;
#pragma omp simd
      for (int64_t hw = 0; hw < HW; ++hw) {
        const acc_t v = static_cast<acc_t>(row[hw]);
        a[hw] += v * v;
      }
    }
#pragma omp simd
    for (int64_t hw = 0; hw < HW; ++hw) a[hw] *= inv_c;
  }
}

// Normalises a in place by max(||a||, eps); returns ||a||.
template <typename acc_t>
ZSKT_MULTIVERSION acc_t normalise(acc_t* __restrict__ a, int64_t HW) {
  acc_t sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t hw = 0; hw < HW; ++hw) sq += a[hw] * a[hw];
  const acc_t norm = std::sqrt(sq);
  const acc_t inv = acc_t(1) / std::max(norm, static_cast<acc_t>(kNormEps));
#pragma omp simd
  for (int64_t hw = 0; hw < HW; ++hw) a[hw] *= inv;
  return norm;
}

int64_t sample_grain(int64_t work_per_sample) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_sample, 1));
}

// The gradient for one sample: g_q = 2 (q - q_other) grad; g_a = (g_q - q <q, g_q>) / ||a||, or g_q / eps where
// ||a|| <= eps and the normalisation divides by the constant eps; dA[c, hw] = g_a[hw] * 2 A[c, hw] / C.
// A bfloat16 / float16 gradient is computed in float into `row` and narrowed once per row (see convert.h).
template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void sample_gradient(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                       const acc_t* __restrict__ q, const acc_t* __restrict__ q_other, acc_t two_grad,
                                       acc_t norm, int64_t C, int64_t HW, bool channels_last, acc_t* __restrict__ ga,
                                       acc_t* __restrict__ row) {
  acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t hw = 0; hw < HW; ++hw) {
    const acc_t gq = two_grad * (q[hw] - q_other[hw]);
    ga[hw] = gq;
    dot += q[hw] * gq;
  }
  const acc_t eps = static_cast<acc_t>(kNormEps);
  const bool projected = norm > eps;
  const acc_t scale = (acc_t(2) / static_cast<acc_t>(C)) / (projected ? norm : eps);
  if (!projected) dot = 0;
#pragma omp simd
  for (int64_t hw = 0; hw < HW; ++hw) ga[hw] = (ga[hw] - q[hw] * dot) * scale;
  if (channels_last) {
    for (int64_t hw = 0; hw < HW; ++hw) {
      const acc_t w = ga[hw];
      if (kWidened<scalar_t>) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) row[c] = w * static_cast<acc_t>(x[hw * C + c]);
        convert(row, out + hw * C, C);
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) out[hw * C + c] = static_cast<scalar_t>(w * static_cast<acc_t>(x[hw * C + c]));
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      if (kWidened<scalar_t>) {
#pragma omp simd
        for (int64_t hw = 0; hw < HW; ++hw) row[hw] = ga[hw] * static_cast<acc_t>(x[c * HW + hw]);
        convert(row, out + c * HW, HW);
      } else {
#pragma omp simd
        for (int64_t hw = 0; hw < HW; ++hw)
          out[c * HW + hw] = static_cast<scalar_t>(ga[hw] * static_cast<acc_t>(x[c * HW + hw]));
      }
    }
  }
}

template <typename scalar_t>
void forward_kernel(const Features& s, const Features& t, int64_t B, at::Tensor& sq_diff, at::Tensor& q_s,
                    at::Tensor& q_t, at::Tensor& norm_s, at::Tensor& norm_t) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = s.HW;
  const scalar_t* sp = s.tensor.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.tensor.const_data_ptr<scalar_t>();
  acc_t* qsp = q_s.mutable_data_ptr<acc_t>();
  acc_t* qtp = q_t.mutable_data_ptr<acc_t>();
  acc_t* nsp = norm_s.mutable_data_ptr<acc_t>();
  acc_t* ntp = norm_t.mutable_data_ptr<acc_t>();
  acc_t* dp = sq_diff.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B, sample_grain((s.C + t.C) * HW), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      acc_t* as = qsp + b * HW;
      acc_t* at_ = qtp + b * HW;
      channel_mean_of_squares(sp + b * s.C * HW, s.channels_last, s.C, HW, as);
      channel_mean_of_squares(tp + b * t.C * HW, t.channels_last, t.C, HW, at_);
      nsp[b] = normalise(as, HW);
      ntp[b] = normalise(at_, HW);
      acc_t d = 0;
#pragma omp simd reduction(+ : d)
      for (int64_t hw = 0; hw < HW; ++hw) {
        const acc_t diff = as[hw] - at_[hw];
        d += diff * diff;
      }
      dp[b] = d;
    }
  });
}

template <typename scalar_t>
void backward_kernel(const Features& x, const at::Tensor& g, const at::Tensor& q, const at::Tensor& qo,
                     const at::Tensor& n, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  TORCH_CHECK(q.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
              "zskt_fast: attention maps have the wrong dtype");
  const int64_t B = x.tensor.size(0), C = x.C, HW = x.HW;
  const scalar_t* xp = x.tensor.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const acc_t* gp = g.const_data_ptr<acc_t>();
  const acc_t* qp = q.const_data_ptr<acc_t>();
  const acc_t* qop = qo.const_data_ptr<acc_t>();
  const acc_t* np = n.const_data_ptr<acc_t>();
  at::parallel_for(0, B, sample_grain(C * HW), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ga(HW), row(kWidened<scalar_t> ? std::max(C, HW) : 0);
    for (int64_t b = begin; b < end; ++b)
      sample_gradient(xp + b * C * HW, op + b * C * HW, qp + b * HW, qop + b * HW, 2 * gp[b], np[b], C, HW,
                      x.channels_last, ga.data(), row.data());
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_transfer_forward_cpu(
    const at::Tensor& student_features, const at::Tensor& teacher_features) {
  check_feature_pair(student_features, teacher_features);
  const Features s = as_readable(student_features);
  const Features t = as_readable(teacher_features);
  const int64_t B = student_features.size(0), HW = s.HW;
  const auto acc_type = accumulation_type(student_features);
  const auto opts = student_features.options().dtype(acc_type);
  auto sq_diff = at::empty({B}, opts);
  auto q_s = at::empty({B, HW}, opts);
  auto q_t = at::empty({B, HW}, opts);
  auto norm_s = at::empty({B}, opts);
  auto norm_t = at::empty({B}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.tensor.scalar_type(), "attention_transfer_forward_cpu",
                                  [&] { forward_kernel<scalar_t>(s, t, B, sq_diff, q_s, q_t, norm_s, norm_t); });
  return {sq_diff, q_s, q_t, norm_s, norm_t};
}

at::Tensor attention_transfer_backward_cpu(const at::Tensor& grad_sq_diff, const at::Tensor& features,
                                           const at::Tensor& attention, const at::Tensor& other_attention,
                                           const at::Tensor& norm) {
  check_features(features, "features");
  const int64_t B = features.size(0);
  const Features x = as_readable(features);
  const int64_t HW = x.HW;
  TORCH_CHECK(attention.sizes() == at::IntArrayRef({B, HW}) && other_attention.sizes() == attention.sizes(),
              "zskt_fast: attention maps must be [B, H*W] = [", B, ", ", HW, "]");
  TORCH_CHECK(grad_sq_diff.numel() == B && norm.numel() == B, "zskt_fast: expected [B] per-sample statistics");
  const auto acc_type = attention.scalar_type();
  const auto g = grad_sq_diff.to(acc_type).contiguous();
  const auto q = attention.contiguous();
  const auto qo = other_attention.to(acc_type).contiguous();
  const auto n = norm.to(acc_type).contiguous();
  // The gradient takes the layout of the input when that layout is one the kernel writes directly.
  auto grad = at::empty_like(features);
  const bool direct = (x.tensor.is_same(features)) &&
                      (x.channels_last ? grad.is_contiguous(at::MemoryFormat::ChannelsLast) : grad.is_contiguous());
  auto out = direct ? grad : at::empty_like(x.tensor, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.tensor.scalar_type(), "attention_transfer_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(x, g, q, qo, n, out); });
  if (!direct) grad.copy_(out);
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(zskt_fast, CPU, m) {
  m.impl("attention_transfer_forward", &attention_transfer_forward_cpu);
  m.impl("attention_transfer_backward", &attention_transfer_backward_cpu);
}

}  // namespace zskt
