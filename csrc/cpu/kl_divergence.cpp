// KL divergence between the softened class distributions of teacher and student, CPU kernel.
//
// Per row: one pass for both maxima (and a class of the teacher's), one for both sums of exponentials and the KL;
// the gradients in one pass. The row state and gradient formulas are kl_state.h's, shared with the CUDA kernels.
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
#include "../kl_state.h"
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
struct Exp {
  template <typename acc_t>
  acc_t operator()(acc_t x) const { return exp_of(x); }
};

// Independent partial results in a few lanes, combined in a fixed order at the end: the compiler vectorises the lanes
// without reordering any one sum, and a row's result does not depend on how rows are spread over threads.
constexpr int kLanes = 8;

// Both rows' maxima (in logit units: x / T has the same maximum class), and a lane of the teacher's: the classes
// lane, lane + kLanes, ... (and, for lane 0, the last C % kLanes) hold its maximum.
template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void row_maxima(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, int64_t C,
                                  acc_t& m_s, acc_t& m_t, int& lane_t) {
  acc_t ms[kLanes], mt[kLanes];
  for (int l = 0; l < kLanes; ++l) ms[l] = mt[l] = -std::numeric_limits<acc_t>::infinity();
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      ms[l] = std::max(ms[l], static_cast<acc_t>(s[c + l]));
      mt[l] = std::max(mt[l], static_cast<acc_t>(t[c + l]));
    }
  }
  for (; c < C; ++c) {
    ms[0] = std::max(ms[0], static_cast<acc_t>(s[c]));
    mt[0] = std::max(mt[0], static_cast<acc_t>(t[c]));
  }
  acc_t top_s = ms[0], top_t = mt[0];
  for (int l = 1; l < kLanes; ++l) {
    top_s = std::max(top_s, ms[l]);
    top_t = std::max(top_t, mt[l]);
  }
  int lane = 0;
  while (lane < kLanes - 1 && mt[lane] != top_t) ++lane;
  m_s = top_s;
  m_t = top_t;
  lane_t = lane;
}

// A class of row_maxima's lane that holds the teacher's maximum m: a scan of C / kLanes classes at most (tracking
// where each lane's maximum was inside the vectorised pass measured slower).
template <typename scalar_t, typename acc_t>
int64_t class_of_maximum(const scalar_t* t, int64_t C, acc_t m, int lane) {
  const int64_t blocked = C - C % kLanes;
  for (int64_t c = lane; c < blocked; c += kLanes) {
    if (static_cast<acc_t>(t[c]) == m) return c;
  }
  for (int64_t c = blocked; c < C; ++c) {
    if (static_cast<acc_t>(t[c]) == m) return c;
  }
  return 0;  // not reached: m is the lane's maximum
}

// With e = exp((x_t - m_t) / T): the sums of exp((x_s - m_s) / T) and of e, and
// w = sum_c e_c ((x_t,c - x_s,c) - (m_t - y_ref)) (see KlState; the same difference as (x_t - m_t) - (x_s - y_ref),
// exactly 0 at the reference class, in fewer operations). A class without teacher mass (x_t = -inf) adds nothing to w;
// one with teacher mass and a student at -inf makes w non-finite (+inf, or NaN where e underflows), which marks the KL
// +inf.
template <typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void row_sums(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, int64_t C,
                                acc_t inv_tau, acc_t m_s, acc_t m_t, acc_t y_ref, acc_t& sum_s, acc_t& sum_t,
                                acc_t& weighted) {
  acc_t ss[kLanes] = {}, st[kLanes] = {}, ww[kLanes] = {};
  const acc_t m_s_scaled = m_s * inv_tau, m_t_scaled = m_t * inv_tau, gap = m_t - y_ref;
  auto add = [&](int l, scalar_t xs, scalar_t xt) {
    const acc_t x = static_cast<acc_t>(xt), y = static_cast<acc_t>(xs);
    const acc_t e = exp_of(x * inv_tau - m_t_scaled);
    ss[l] += exp_of(y * inv_tau - m_s_scaled);
    st[l] += e;
    ww[l] += x == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : e * ((x - y) - gap);
  };
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) add(l, s[c + l], t[c + l]);
  }
  for (; c < C; ++c) add(0, s[c], t[c]);
  // Added in locals, stored once: through the references every addition would wait on a store and a reload.
  acc_t total_s = 0, total_t = 0, total_w = 0;
  for (int l = 0; l < kLanes; ++l) {
    total_s += ss[l];
    total_t += st[l];
    total_w += ww[l];
  }
  sum_s = total_s;
  sum_t = total_t;
  weighted = total_w;
}

// The gradients that kStudent / kTeacher ask for (a frozen teacher's is never computed, nor written); the formulas
// are kl_state.h's.
template <bool kStudent, bool kTeacher, typename scalar_t, typename acc_t>
ZSKT_MULTIVERSION void row_gradients(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, int64_t C,
                                     acc_t inv_tau, const acc_t* stats_s, const acc_t* stats_t, acc_t scale,
                                     scalar_t* __restrict__ grad_s, scalar_t* __restrict__ grad_t) {
  // Local copies: the compiler cannot tell that the stores leave the statistics alone, and would neither keep them in
  // registers nor vectorise the loop.
  const acc_t row_s[2] = {stats_s[0], stats_s[1]}, row_t[4] = {stats_t[0], stats_t[1], stats_t[2], stats_t[3]};
  for (int64_t c = 0; c < C; ++c) {
    acc_t gs, gt;
    kl_gradients<kStudent, kTeacher>(static_cast<acc_t>(t[c]), static_cast<acc_t>(s[c]), inv_tau, row_s, row_t,
                                     scale, Exp{}, gs, gt);
    if constexpr (kStudent) grad_s[c] = static_cast<scalar_t>(gs);
    if constexpr (kTeacher) grad_t[c] = static_cast<scalar_t>(gt);
  }
}

// Rows of float and double are worked on as they are, in one piece. bfloat16 and float16 rows are converted to float
// kPiece classes at a time, into a per-thread buffer in the L1 cache (2 * kPiece), and the passes run on those float
// vectors (c10's conversion inside a computing pass keeps the compiler from vectorising it). Calls
// body(student piece, teacher piece, its length, its first class) in order.
constexpr int64_t kPiece = 1024;

template <typename scalar_t, typename acc_t, typename Body>
void for_pieces(const scalar_t* s, const scalar_t* t, int64_t n, acc_t* wide, Body body) {
  if constexpr (kWidened<scalar_t>) {
    for (int64_t first = 0; first < n; first += kPiece) {
      const int64_t m = std::min(kPiece, n - first);
      convert(s + first, wide, m);
      convert(t + first, wide + kPiece, m);
      body(static_cast<const acc_t*>(wide), static_cast<const acc_t*>(wide + kPiece), m, first);
    }
  } else {
    body(s, t, n, int64_t{0});
  }
}

// The state (kl_state.h) of n classes, in two passes over them: both maxima (and a class of the teacher's), then the
// sums relative to those. A side without a finite maximum sums relative to 0, so that an all -inf side sums to 0
// (a NaN one to NaN) and merges as empty.
template <typename scalar_t, typename acc_t>
KlState<acc_t> span_state(const scalar_t* s, const scalar_t* t, int64_t n, acc_t inv_tau, acc_t* wide) {
  auto state = KlState<acc_t>::empty();
  int64_t piece_of_max = 0, piece_length = 0;
  int lane_of_max = 0;
  for_pieces(s, t, n, wide, [&](const acc_t* ps, const acc_t* pt, int64_t m, int64_t first) {
    acc_t piece_s, piece_t;
    int lane;
    row_maxima(ps, pt, m, piece_s, piece_t, lane);
    state.m_s = std::max(state.m_s, piece_s);
    if (piece_t > state.m_t) {  // the first piece that reaches the maximum holds the reference class
      state.m_t = piece_t;
      piece_of_max = first;
      piece_length = m;
      lane_of_max = lane;
    }
  });
  const acc_t m_s = std::isfinite(state.m_s) ? state.m_s : acc_t(0);
  const acc_t m_t = std::isfinite(state.m_t) ? state.m_t : acc_t(0);
  if (std::isfinite(state.m_t)) {
    const int64_t k = piece_of_max + class_of_maximum(t + piece_of_max, piece_length, state.m_t, lane_of_max);
    state.y_ref = static_cast<acc_t>(s[k]);
  }
  for_pieces(s, t, n, wide, [&](const acc_t* ps, const acc_t* pt, int64_t m, int64_t) {
    acc_t piece_s, piece_t, piece_w;
    row_sums(ps, pt, m, inv_tau, m_s, m_t, state.y_ref, piece_s, piece_t, piece_w);
    state.sum_s += piece_s;
    state.sum_t += piece_t;
    state.w += piece_w;
  });
  state.infinite = !std::isfinite(state.w);
  return state;
}

int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)); }

// Rows longer than this are cut into segments of this many classes, each a unit of parallel work, so that a few long
// rows (a language model's vocabulary at a small batch) still spread over every thread. The cut does not depend on the
// thread count and the segments' states are merged in segment order, so results stay bitwise independent of it. Both
// rows' segments (in float) fit a core's L2 cache.
constexpr int64_t kSegment = 16384;

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
  auto stats_t = at::empty({B, 4}, kl.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kl_divergence_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    acc_t* klp = kl.mutable_data_ptr<acc_t>();
    acc_t* ssp = stats_s.mutable_data_ptr<acc_t>();
    acc_t* stp = stats_t.mutable_data_ptr<acc_t>();
    const acc_t inv_tau = acc_t(1) / static_cast<acc_t>(temperature);
    // Every segment's state in parallel, then each row's merged in segment order.
    const int64_t segment = std::min(C, kSegment), segments = (C + segment - 1) / segment;
    std::vector<KlState<acc_t>> states(segments > 1 ? B * segments : 0);
    at::parallel_for(0, B * segments, row_grain(segment), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> wide(kWidened<scalar_t> ? 2 * kPiece : 0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / segments, first = (item % segments) * segment, n = std::min(segment, C - first);
        const auto state = span_state(sp + b * C + first, tp + b * C + first, n, inv_tau, wide.data());
        if (segments == 1) state.finish(inv_tau, klp + b, ssp + 2 * b, stp + 4 * b);
        else states[item] = state;
      }
    });
    for (int64_t b = 0; segments > 1 && b < B; ++b) {
      auto state = states[b * segments];
      for (int64_t j = 1; j < segments; ++j) state.merge(states[b * segments + j], inv_tau);
      state.finish(inv_tau, klp + b, ssp + 2 * b, stp + 4 * b);
    }
  });
  return {kl, stats_s, stats_t};
}

// Element by element: parallel over segments of rows (see kSegment), whatever the batch.
template <bool kStudent, bool kTeacher, typename scalar_t>
void backward_kernel(const scalar_t* sp, const scalar_t* tp, int64_t B, int64_t C, double temperature,
                     const at::Tensor& g, const at::Tensor& ss, const at::Tensor& st, scalar_t* gsp, scalar_t* gtp) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* gp = g.const_data_ptr<acc_t>();
  const acc_t* ssp = ss.const_data_ptr<acc_t>();
  const acc_t* stp = st.const_data_ptr<acc_t>();
  const acc_t inv_tau = acc_t(1) / static_cast<acc_t>(temperature);
  const int64_t segment = std::min(C, kSegment), segments = (C + segment - 1) / segment;
  at::parallel_for(0, B * segments, row_grain(segment), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> wide(kWidened<scalar_t> ? 4 * kPiece : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / segments, first = (item % segments) * segment, n = std::min(segment, C - first);
      const acc_t *row_s = ssp + 2 * b, *row_t = stp + 4 * b, scale = gp[b] * inv_tau;
      const int64_t offset = b * C + first;
      if constexpr (kWidened<scalar_t>) {
        // Converted, computed and converted back a piece at a time, in the L1 cache.
        acc_t *ws = wide.data(), *wt = ws + kPiece, *gs = wt + kPiece, *gt = gs + kPiece;
        for (int64_t at = offset; at < offset + n; at += kPiece) {
          const int64_t m = std::min(kPiece, offset + n - at);
          convert(sp + at, ws, m);
          convert(tp + at, wt, m);
          row_gradients<kStudent, kTeacher>(ws, wt, m, inv_tau, row_s, row_t, scale, gs, gt);
          if (kStudent) convert(gs, gsp + at, m);
          if (kTeacher) convert(gt, gtp + at, m);
        }
      } else {
        row_gradients<kStudent, kTeacher>(sp + offset, tp + offset, n, inv_tau, row_s, row_t, scale,
                                          kStudent ? gsp + offset : nullptr, kTeacher ? gtp + offset : nullptr);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> kl_divergence_backward_cpu(const at::Tensor& grad_rows,
                                                             const at::Tensor& student_logits,
                                                             const at::Tensor& teacher_logits,
                                                             const at::Tensor& student_stats,
                                                             const at::Tensor& teacher_stats, double temperature,
                                                             std::array<bool, 2> output_mask) {
  check_logit_pair(student_logits, teacher_logits);
  const int64_t B = student_logits.size(0), C = student_logits.size(1);
  check_kl_row_statistics(grad_rows, student_stats, teacher_stats, B);
  const auto s = student_logits.contiguous();
  const auto t = teacher_logits.contiguous();
  const auto acc_type = accumulation_type(s);
  const auto g = grad_rows.to(acc_type).contiguous();
  const auto ss = student_stats.to(acc_type).contiguous();
  const auto st = teacher_stats.to(acc_type).contiguous();
  const auto [want_s, want_t] = output_mask;
  auto grad_s = want_s ? at::empty({B, C}, s.options()) : at::empty({0}, s.options());
  auto grad_t = want_t ? at::empty({B, C}, t.options()) : at::empty({0}, t.options());
  if (!want_s && !want_t) return {grad_s, grad_t};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kl_divergence_backward_cpu", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* gsp = want_s ? grad_s.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gtp = want_t ? grad_t.mutable_data_ptr<scalar_t>() : nullptr;
    if (want_s && want_t) {
      backward_kernel<true, true>(sp, tp, B, C, temperature, g, ss, st, gsp, gtp);
    } else if (want_s) {
      backward_kernel<true, false>(sp, tp, B, C, temperature, g, ss, st, gsp, gtp);
    } else {
      backward_kernel<false, true>(sp, tp, B, C, temperature, g, ss, st, gsp, gtp);
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
