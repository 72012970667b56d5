// KL divergence between the softened class distributions of teacher and student, CPU kernel.
//
// Per row: one pass for both maxima, one for both sums of exponentials and the KL; the gradients in one pass.
// bfloat16 / float16 rows are widened to float a piece at a time first, the gradients narrowed after. The passes are
// plain loops over contiguous rows that the compiler vectorises, exp included. Parallel over rows, and over segments
// of rows when rows are long; a row's result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "convert.h"
#include "multiversion.h"

// glibc's vector exp (libmvec, reached through libm), declared for the vectoriser: glibc's own headers declare it only
// under -ffast-math, whose reassociation would undo the order of the subtractions below.
extern "C" float expf(float) noexcept __attribute__((simd("notinbranch")));
extern "C" double exp(double) noexcept __attribute__((simd("notinbranch")));

namespace zskt {
namespace {

inline float exp_of(float x) { return expf(x); }
inline double exp_of(double x) { return exp(x); }

// Independent partial results in a few lanes, combined in a fixed order at the end: the compiler vectorises the lanes
// without reordering any one sum, and a row's result does not depend on how rows are spread over threads.
constexpr int kLanes = 8;

// Row statistics of x / temperature are kept as the maximum m and log sum_c exp(x_c - m), apart, so that
// log p_c = (x_c - m) - log-sum loses nothing for the largest logits when the softmax saturates.
template <typename acc_t>
struct RowStats {
  acc_t m_s, log_sum_s, m_t, log_sum_t;
};

template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void row_maxima(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, int64_t C,
                                  acc_t inv_tau, acc_t& m_s, acc_t& m_t) {
  acc_t ms[kLanes], mt[kLanes];
  for (int l = 0; l < kLanes; ++l) ms[l] = mt[l] = -std::numeric_limits<acc_t>::infinity();
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      ms[l] = std::max(ms[l], static_cast<acc_t>(s[c + l]) * inv_tau);
      mt[l] = std::max(mt[l], static_cast<acc_t>(t[c + l]) * inv_tau);
    }
  }
  for (; c < C; ++c) {
    ms[0] = std::max(ms[0], static_cast<acc_t>(s[c]) * inv_tau);
    mt[0] = std::max(mt[0], static_cast<acc_t>(t[c]) * inv_tau);
  }
  m_s = ms[0];
  m_t = mt[0];
  for (int l = 1; l < kLanes; ++l) {
    m_s = std::max(m_s, ms[l]);
    m_t = std::max(m_t, mt[l]);
  }
}

// With A = x_t / T - m_t and B = x_s / T - m_s: the sums of exp(B) and of e = exp(A), and W = sum_c e_c (A_c - B_c).
// Then KL = sum_c p_t,c (log p_t,c - log p_s,c) = W / sum_t - log sum_t + log sum_s, so that the KL takes no pass of
// its own. A term with e = 0 is 0 (p_t log p_t = 0 where p_t underflows, as F.kl_div's xlogy).
template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void row_sums(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, int64_t C,
                                acc_t inv_tau, acc_t m_s, acc_t m_t, acc_t& sum_s, acc_t& sum_t, acc_t& weighted) {
  acc_t ss[kLanes] = {}, st[kLanes] = {}, ww[kLanes] = {};
  auto add = [&](int l, scalar_t xs, scalar_t xt) {
    const acc_t a = static_cast<acc_t>(xt) * inv_tau - m_t;
    const acc_t b = static_cast<acc_t>(xs) * inv_tau - m_s;
    const acc_t e = exp_of(a);
    ss[l] += exp_of(b);
    st[l] += e;
    ww[l] += e == acc_t(0) ? acc_t(0) : e * (a - b);
  };
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) add(l, s[c + l], t[c + l]);
  }
  for (; c < C; ++c) add(0, s[c], t[c]);
  sum_s = 0;
  sum_t = 0;
  weighted = 0;
  for (int l = 0; l < kLanes; ++l) {
    sum_s += ss[l];
    sum_t += st[l];
    weighted += ww[l];
  }
}

template <typename scalar_t, typename acc_t>
inline acc_t log_prob(scalar_t x, acc_t inv_tau, acc_t m, acc_t log_sum) {
  return (static_cast<acc_t>(x) * inv_tau - m) - log_sum;
}

// The gradients that kStudent / kTeacher ask for (a frozen teacher's is never computed, nor written).
template <bool kStudent, bool kTeacher, typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void row_gradients(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, int64_t C,
                                     acc_t inv_tau, RowStats<acc_t> st, acc_t kl, acc_t scale,
                                     scalar_t* __restrict__ grad_s, scalar_t* __restrict__ grad_t) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t log_ps = log_prob(s[c], inv_tau, st.m_s, st.log_sum_s);
    const acc_t log_pt = log_prob(t[c], inv_tau, st.m_t, st.log_sum_t);
    const acc_t pt = exp_of(log_pt);
    if constexpr (kStudent) grad_s[c] = static_cast<scalar_t>(scale * (exp_of(log_ps) - pt));
    if constexpr (kTeacher)
      grad_t[c] = static_cast<scalar_t>(pt == acc_t(0) ? acc_t(0) : scale * pt * ((log_pt - log_ps) - kl));
  }
}

// Rows of float and double are worked on as they are, in one piece. bfloat16 and float16 rows are converted to float
// kPiece classes at a time, into a per-thread buffer in the L1 cache (2 * kPiece), and the passes run on those float
// vectors (c10's conversion inside a computing pass keeps the compiler from vectorising it). Calls
// body(student piece, teacher piece, its length) in order.
constexpr int64_t kPiece = 1024;

template <typename scalar_t, typename acc_t, typename Body>
void for_pieces(const scalar_t* s, const scalar_t* t, int64_t n, acc_t* wide, Body body) {
  if constexpr (kWidened<scalar_t>) {
    for (int64_t first = 0; first < n; first += kPiece) {
      const int64_t m = std::min(kPiece, n - first);
      convert(s + first, wide, m);
      convert(t + first, wide + kPiece, m);
      body(wide, wide + kPiece, m);
    }
  } else {
    body(s, t, n);
  }
}

// The maxima of both rows of x / T over n classes.
template <typename scalar_t, typename acc_t>
void span_maxima(const scalar_t* s, const scalar_t* t, int64_t n, acc_t inv_tau, acc_t* wide, acc_t& m_s, acc_t& m_t) {
  m_s = m_t = -std::numeric_limits<acc_t>::infinity();
  for_pieces(s, t, n, wide, [&](const acc_t* ps, const acc_t* pt, int64_t m) {
    acc_t piece_s, piece_t;
    row_maxima(ps, pt, m, inv_tau, piece_s, piece_t);
    m_s = std::max(m_s, piece_s);
    m_t = std::max(m_t, piece_t);
  });
}

// The sums of row_sums over n classes, added piece by piece in order.
template <typename scalar_t, typename acc_t>
void span_sums(const scalar_t* s, const scalar_t* t, int64_t n, acc_t inv_tau, acc_t m_s, acc_t m_t, acc_t* wide,
               acc_t& sum_s, acc_t& sum_t, acc_t& weighted) {
  sum_s = sum_t = weighted = 0;
  for_pieces(s, t, n, wide, [&](const acc_t* ps, const acc_t* pt, int64_t m) {
    acc_t piece_s, piece_t, piece_w;
    row_sums(ps, pt, m, inv_tau, m_s, m_t, piece_s, piece_t, piece_w);
    sum_s += piece_s;
    sum_t += piece_t;
    weighted += piece_w;
  });
}

// One row's forward: a pass for both maxima, a pass for both sums and the KL.
template <typename scalar_t, typename acc_t>
void forward_row(const scalar_t* sr, const scalar_t* tr, int64_t C, acc_t inv_tau, acc_t* wide, acc_t& kl,
                 RowStats<acc_t>& stats) {
  acc_t m_s, m_t, sum_s = 0, sum_t = 0, weighted = 0;
  span_maxima(sr, tr, C, inv_tau, wide, m_s, m_t);
  const bool finite = !std::isinf(m_s) && !std::isinf(m_t);
  if (finite) span_sums(sr, tr, C, inv_tau, m_s, m_t, wide, sum_s, sum_t, weighted);
  // All -inf (or a +inf) in a row: a NaN KL, so that the caller sees a non-finite value.
  stats = RowStats<acc_t>{m_s, finite ? std::log(sum_s) : acc_t(0), m_t, finite ? std::log(sum_t) : acc_t(0)};
  kl = finite ? (weighted / sum_t - stats.log_sum_t) + stats.log_sum_s : std::numeric_limits<acc_t>::quiet_NaN();
}

int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)); }

// Rows longer than this are cut into segments of this many classes, each a unit of parallel work, so that a few long
// rows (a language model's vocabulary at a small batch) still spread over every thread. The cut does not depend on the
// thread count and the segments' partial results are combined in segment order, so results stay bitwise independent of
// it. Both rows' segments (in float) fit a core's L2 cache.
constexpr int64_t kSegment = 16384;

// The forward of rows cut into segments: the maxima of every segment in parallel, combined per row; then every
// segment's sums and KL term in parallel, added per row in segment order.
template <typename scalar_t, typename acc_t>
void forward_segmented(const scalar_t* sp, const scalar_t* tp, int64_t B, int64_t C, acc_t inv_tau, acc_t* klp,
                       acc_t* ssp, acc_t* stp) {
  const int64_t segments = (C + kSegment - 1) / kSegment;
  std::vector<acc_t> maxima(2 * B * segments), sums(3 * B * segments);
  auto segment_of = [&](int64_t item, int64_t& b, int64_t& first, int64_t& n) {
    b = item / segments;
    first = (item % segments) * kSegment;
    n = std::min(kSegment, C - first);
  };
  at::parallel_for(0, B * segments, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> wide(kWidened<scalar_t> ? 2 * kPiece : 0);
    for (int64_t item = begin; item < end; ++item) {
      int64_t b, first, n;
      segment_of(item, b, first, n);
      span_maxima(sp + b * C + first, tp + b * C + first, n, inv_tau, wide.data(), maxima[2 * item],
                  maxima[2 * item + 1]);
    }
  });
  std::vector<acc_t> row_max(2 * B, -std::numeric_limits<acc_t>::infinity());
  for (int64_t item = 0; item < B * segments; ++item) {
    const int64_t b = item / segments;
    row_max[2 * b] = std::max(row_max[2 * b], maxima[2 * item]);
    row_max[2 * b + 1] = std::max(row_max[2 * b + 1], maxima[2 * item + 1]);
  }
  at::parallel_for(0, B * segments, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> wide(kWidened<scalar_t> ? 2 * kPiece : 0);
    for (int64_t item = begin; item < end; ++item) {
      int64_t b, first, n;
      segment_of(item, b, first, n);
      const acc_t m_s = row_max[2 * b], m_t = row_max[2 * b + 1];
      if (std::isinf(m_s) || std::isinf(m_t)) continue;
      span_sums(sp + b * C + first, tp + b * C + first, n, inv_tau, m_s, m_t, wide.data(), sums[3 * item],
                sums[3 * item + 1], sums[3 * item + 2]);
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    const acc_t m_s = row_max[2 * b], m_t = row_max[2 * b + 1];
    const bool finite = !std::isinf(m_s) && !std::isinf(m_t);
    acc_t sum_s = 0, sum_t = 0, weighted = 0;
    for (int64_t j = 0; finite && j < segments; ++j) {
      sum_s += sums[3 * (b * segments + j)];
      sum_t += sums[3 * (b * segments + j) + 1];
      weighted += sums[3 * (b * segments + j) + 2];
    }
    const acc_t log_sum_s = finite ? std::log(sum_s) : acc_t(0), log_sum_t = finite ? std::log(sum_t) : acc_t(0);
    klp[b] = finite ? (weighted / sum_t - log_sum_t) + log_sum_s : std::numeric_limits<acc_t>::quiet_NaN();
    ssp[2 * b] = m_s;
    ssp[2 * b + 1] = log_sum_s;
    stp[2 * b] = m_t;
    stp[2 * b + 1] = log_sum_t;
  }
}

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
    if (C > kSegment) {
      forward_segmented(sp, tp, B, C, inv_tau, klp, ssp, stp);
      return;
    }
    at::parallel_for(0, B, row_grain(C), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> wide(kWidened<scalar_t> ? 2 * kPiece : 0);
      for (int64_t b = begin; b < end; ++b) {
        RowStats<acc_t> stats;
        forward_row(sp + b * C, tp + b * C, C, inv_tau, wide.data(), klp[b], stats);
        ssp[2 * b] = stats.m_s;
        ssp[2 * b + 1] = stats.log_sum_s;
        stp[2 * b] = stats.m_t;
        stp[2 * b + 1] = stats.log_sum_t;
      }
    });
  });
  return {kl, stats_s, stats_t};
}

// Element by element: parallel over segments of rows (see kSegment), whatever the batch.
template <bool kStudent, bool kTeacher, typename scalar_t>
void backward_kernel(const scalar_t* sp, const scalar_t* tp, int64_t B, int64_t C, double temperature,
                     const at::Tensor& g, const at::Tensor& ss, const at::Tensor& st, const at::Tensor& klr,
                     scalar_t* gsp, scalar_t* gtp) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* gp = g.const_data_ptr<acc_t>();
  const acc_t* ssp = ss.const_data_ptr<acc_t>();
  const acc_t* stp = st.const_data_ptr<acc_t>();
  const acc_t* klp = klr.const_data_ptr<acc_t>();
  const acc_t inv_tau = acc_t(1) / static_cast<acc_t>(temperature);
  const int64_t segment = std::min(C, kSegment), segments = (C + segment - 1) / segment;
  at::parallel_for(0, B * segments, row_grain(segment), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> wide(kWidened<scalar_t> ? 4 * kPiece : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / segments, first = (item % segments) * segment, n = std::min(segment, C - first);
      const RowStats<acc_t> stats{ssp[2 * b], ssp[2 * b + 1], stp[2 * b], stp[2 * b + 1]};
      const int64_t offset = b * C + first;
      if constexpr (kWidened<scalar_t>) {
        // Converted, computed and converted back a piece at a time, in the L1 cache.
        acc_t *ws = wide.data(), *wt = ws + kPiece, *gs = wt + kPiece, *gt = gs + kPiece;
        for (int64_t at = offset; at < offset + n; at += kPiece) {
          const int64_t m = std::min(kPiece, offset + n - at);
          convert(sp + at, ws, m);
          convert(tp + at, wt, m);
          row_gradients<kStudent, kTeacher>(ws, wt, m, inv_tau, stats, klp[b], gp[b] * inv_tau, gs, gt);
          if (kStudent) convert(gs, gsp + at, m);
          if (kTeacher) convert(gt, gtp + at, m);
        }
      } else {
        row_gradients<kStudent, kTeacher>(sp + offset, tp + offset, n, inv_tau, stats, klp[b], gp[b] * inv_tau,
                                          kStudent ? gsp + offset : nullptr, kTeacher ? gtp + offset : nullptr);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> kl_divergence_backward_cpu(const at::Tensor& grad_rows,
                                                             const at::Tensor& student_logits,
                                                             const at::Tensor& teacher_logits,
                                                             const at::Tensor& student_stats,
                                                             const at::Tensor& teacher_stats,
                                                             const at::Tensor& kl_rows, double temperature,
                                                             std::array<bool, 2> output_mask) {
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
  const auto [want_s, want_t] = output_mask;
  auto grad_s = want_s ? at::empty({B, C}, s.options()) : at::empty({0}, s.options());
  auto grad_t = want_t ? at::empty({B, C}, t.options()) : at::empty({0}, t.options());
  if (!want_s && !want_t) return {grad_s, grad_t};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kl_divergence_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(acc_type == c10::CppTypeToScalarType<acc_t>::value, "zskt_fast: row statistics have the wrong dtype");
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* gsp = want_s ? grad_s.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gtp = want_t ? grad_t.mutable_data_ptr<scalar_t>() : nullptr;
    if (want_s && want_t) {
      backward_kernel<true, true>(sp, tp, B, C, temperature, g, ss, st, klr, gsp, gtp);
    } else if (want_s) {
      backward_kernel<true, false>(sp, tp, B, C, temperature, g, ss, st, klr, gsp, gtp);
    } else {
      backward_kernel<false, true>(sp, tp, B, C, temperature, g, ss, st, klr, gsp, gtp);
    }
  });
  return {grad_s, grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(zskt_fast, CPU, m) {
  m.impl("kl_divergence_forward", &kl_divergence_forward_cpu);
  m.impl("kl_divergence_backward", &kl_divergence_backward_cpu);
}

}  // namespace zskt
