// KL divergence between the softened class distributions of teacher and student, CPU kernel.
// One parallel loop over rows; each row is read a few times while it sits in L1. Only [B] and [B, C] buffers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "../checks.h"

namespace zskt {
namespace {

// Row statistics of x / temperature: the maximum m (so that exp never overflows) and log sum_c exp(x_c - m). Kept
// apart so that log p_c = (x_c - m) - log-sum loses nothing for the largest logits when the softmax saturates.
template <typename scalar_t, typename acc_t>
void row_stats(const scalar_t* x, int64_t C, acc_t inv_tau, acc_t* stats) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t c = 0; c < C; ++c) m = std::max(m, static_cast<acc_t>(x[c]) * inv_tau);
  acc_t sum = 0;
  if (!std::isinf(m)) {  // all -inf (or a +inf): let the caller see a non-finite value
    for (int64_t c = 0; c < C; ++c) sum += std::exp(static_cast<acc_t>(x[c]) * inv_tau - m);
  }
  stats[0] = m;
  stats[1] = std::isinf(m) ? acc_t(0) : std::log(sum);
}

template <typename scalar_t, typename acc_t>
acc_t log_prob(scalar_t x, acc_t inv_tau, const acc_t* stats) {
  return (static_cast<acc_t>(x) * inv_tau - stats[0]) - stats[1];
}

int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_divergence_forward_cpu(const at::Tensor& student_logits,
                                                                        const at::Tensor& teacher_logits,
                                                                        double temperature) {
  check_logit_pair(student_logits, teacher_logits);
  TORCH_CHECK(temperature > 0, "zskt_fast: temperature must be positive");
  const auto s = student_logits.contiguous();
  const auto t = teacher_logits.contiguous();
  const int64_t B = s.size(0), C = s.size(1);
  const auto acc_type = accumulation_type(s);
  auto kl = at::empty({B}, s.options().dtype(acc_type));
  auto stats_s = at::empty({B, 2}, kl.options());
  auto stats_t = at::empty({B, 2}, kl.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kl_divergence_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    acc_t* klp = kl.mutable_data_ptr<acc_t>();
    acc_t* ssp = stats_s.mutable_data_ptr<acc_t>();
    acc_t* stp = stats_t.mutable_data_ptr<acc_t>();
    const acc_t inv_tau = acc_t(1) / static_cast<acc_t>(temperature);
    at::parallel_for(0, B, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* sr = sp + b * C;
        const scalar_t* tr = tp + b * C;
        acc_t* ss = ssp + 2 * b;
        acc_t* st = stp + 2 * b;
        row_stats(sr, C, inv_tau, ss);
        row_stats(tr, C, inv_tau, st);
        acc_t sum = 0;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t log_pt = log_prob(tr[c], inv_tau, st);
          const acc_t log_ps = log_prob(sr[c], inv_tau, ss);
          const acc_t pt = std::exp(log_pt);
          // p_t log p_t is 0 where p_t underflows to 0 (xlogy convention, as F.kl_div).
          sum += pt == acc_t(0) ? acc_t(0) : pt * (log_pt - log_ps);
        }
        klp[b] = sum;
      }
    });
  });
  return {kl, stats_s, stats_t};
}

std::tuple<at::Tensor, at::Tensor> kl_divergence_backward_cpu(const at::Tensor& grad_rows,
                                                             const at::Tensor& student_logits,
                                                             const at::Tensor& teacher_logits,
                                                             const at::Tensor& student_stats,
                                                             const at::Tensor& teacher_stats,
                                                             const at::Tensor& kl_rows,
                                                             double temperature) {
  check_logit_pair(student_logits, teacher_logits);
  const int64_t B = student_logits.size(0), C = student_logits.size(1);
  TORCH_CHECK(grad_rows.numel() == B && student_stats.numel() == 2 * B && teacher_stats.numel() == 2 * B &&
                  kl_rows.numel() == B,
              "zskt_fast: kl_divergence_backward expects [B] rows and [B, 2] row statistics");
  const auto s = student_logits.contiguous();
  const auto t = teacher_logits.contiguous();
  const auto acc_type = kl_rows.scalar_type();
  const auto g = grad_rows.to(acc_type).contiguous();
  const auto ss = student_stats.to(acc_type).contiguous();
  const auto st = teacher_stats.to(acc_type).contiguous();
  const auto klr = kl_rows.contiguous();
  auto grad_s = at::empty({B, C}, s.options());
  auto grad_t = at::empty({B, C}, t.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kl_divergence_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(acc_type == c10::CppTypeToScalarType<acc_t>::value, "zskt_fast: row statistics have the wrong dtype");
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    const acc_t* gp = g.const_data_ptr<acc_t>();
    const acc_t* ssp = ss.const_data_ptr<acc_t>();
    const acc_t* stp = st.const_data_ptr<acc_t>();
    const acc_t* klp = klr.const_data_ptr<acc_t>();
    scalar_t* gsp = grad_s.mutable_data_ptr<scalar_t>();
    scalar_t* gtp = grad_t.mutable_data_ptr<scalar_t>();
    const acc_t inv_tau = acc_t(1) / static_cast<acc_t>(temperature);
    at::parallel_for(0, B, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const acc_t scale = gp[b] * inv_tau;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t log_pt = log_prob(tp[b * C + c], inv_tau, stp + 2 * b);
          const acc_t log_ps = log_prob(sp[b * C + c], inv_tau, ssp + 2 * b);
          const acc_t pt = std::exp(log_pt);
          const acc_t ps = std::exp(log_ps);
          gsp[b * C + c] = static_cast<scalar_t>(scale * (ps - pt));
          gtp[b * C + c] = static_cast<scalar_t>(pt == acc_t(0) ? acc_t(0) : scale * pt * ((log_pt - log_ps) - klp[b]));
        }
      }
    });
  });
  return {grad_s, grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(zskt_fast, CPU, m) {
  m.impl("kl_divergence_forward", &kl_divergence_forward_cpu);
  m.impl("kl_divergence_backward", &kl_divergence_backward_cpu);
}

}  // namespace zskt
