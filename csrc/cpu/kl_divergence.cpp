// KL divergence between the softened class distributions of teacher and student, CPU kernel.
//
// Per row: one pass for both maxima (and a class of the teacher's), one for both sums of exponentials and the KL;
// the gradients in one pass. The row state and gradient formulas are kl_state.h's, shared with the CUDA kernels.
// bfloat16 / float16 rows are widened to float first (see kPiece), the gradients narrowed after. The passes are plain
// loops over contiguous rows that the compiler vectorises, exp (exp.h) included. Parallel over rows, and over segments
// of rows when rows are long; a row's result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../kl_state.h"
#include "convert.h"
#include "exp.h"
#include "multiversion.h"

// glibc's vector exp for double (libmvec, reached through libm), declared for the vectoriser: glibc's own headers
// declare it only under -ffast-math, whose reassociation would undo the order of the subtractions below. Float rows
// use exp.h's, inline.
extern "C" double exp(double) noexcept __attribute__((simd("notinbranch")));

namespace zskt {
namespace {

inline float exp_of(float x) { return exp_float(x); }
inline double exp_of(double x) { return exp(x); }
struct Exp : NaturalExp {  // NaturalExp's scale
  template <typename acc_t>
  acc_t operator()(acc_t x) const { return exp_of(x); }
};

// Independent partial results in kLanes lanes, combined in a fixed order at the end: the compiler vectorises the lanes
// without reordering any one sum, and a row's result does not depend on how rows are spread over threads. Long spans
// use 16 lanes (more exponentials in flight), short ones 8 (fewer classes left to scalar code): the choice depends on
// the span's length alone.
constexpr int64_t kManyLanesFrom = 128;

// Calls add(lane, student logit, teacher logit) on every class in order, class c in lane c % kLanes: the whole
// lanes in vector code, the last C % kLanes classes in scalar code.
template <int kLanes, typename acc_t, typename Add>
ZSKT_INLINE_INTO_CLONE inline void for_lanes(const acc_t* __restrict__ s, const acc_t* __restrict__ t, int64_t C,
                                             Add add) {
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) add(l, s[c + l], t[c + l]);
  }
  for (int l = 0; c + l < C; ++l) add(l, s[c + l], t[c + l]);
}

// The lanes folded in lane order (a tree of pairs measured slower: its steps went through memory).
template <int kLanes, typename acc_t, typename Op>
ZSKT_INLINE_INTO_CLONE inline acc_t fold_lanes(const acc_t* a, Op op) {
  acc_t total = a[0];
  for (int l = 1; l < kLanes; ++l) total = op(total, a[l]);
  return total;
}

// Both rows' maxima (in logit units: x / T has the same maximum class), and a lane that holds the teacher's.
template <int kLanes, typename acc_t>
ZSKT_MULTIVERSION void row_maxima(const acc_t* __restrict__ s, const acc_t* __restrict__ t, int64_t C, acc_t& m_s,
                                  acc_t& m_t, int& lane_t) {
  acc_t ms[kLanes], mt[kLanes];
  for (int l = 0; l < kLanes; ++l) ms[l] = mt[l] = -std::numeric_limits<acc_t>::infinity();
  for_lanes<kLanes>(s, t, C, [&](int l, acc_t y, acc_t x) ZSKT_INLINE_INTO_CLONE {
    ms[l] = std::max(ms[l], y);
    mt[l] = std::max(mt[l], x);
  });
  const auto larger = [](acc_t a, acc_t b) ZSKT_INLINE_INTO_CLONE { return std::max(a, b); };
  m_s = fold_lanes<kLanes>(ms, larger);
  m_t = fold_lanes<kLanes>(mt, larger);
  int lane = 0;
  while (lane < kLanes - 1 && mt[lane] != m_t) ++lane;
  lane_t = lane;
}

// A class of row_maxima's lane that holds the teacher's maximum m: a scan of C / kLanes classes at most (tracking
// where each lane's maximum was inside the vectorised pass measured slower).
template <int kLanes, typename acc_t>
int64_t class_of_maximum(const acc_t* t, int64_t C, acc_t m, int lane) {
  for (int64_t c = lane; c < C; c += kLanes) {
    if (t[c] == m) return c;
  }
  return 0;  // not reached: m is the lane's maximum
}

// With e = exp((x_t - m_t) / T): the sums of exp((x_s - m_s) / T) and of e, and
// w = sum_c e_c ((x_t,c - x_s,c) - (m_t - y_ref)) (see KlState; the same difference as (x_t - m_t) - (x_s - y_ref),
// exactly 0 at the reference class, in fewer operations). A class without teacher mass (x_t = -inf) adds nothing to w;
// one with teacher mass and a student at -inf makes w non-finite (+inf, or NaN where e underflows), which marks the KL
// +inf.
template <int kLanes, typename acc_t>
ZSKT_MULTIVERSION void row_sums(const acc_t* __restrict__ s, const acc_t* __restrict__ t, int64_t C, acc_t inv_tau,
                                acc_t m_s, acc_t m_t, acc_t y_ref, acc_t& sum_s, acc_t& sum_t, acc_t& weighted) {
  acc_t ss[kLanes] = {}, st[kLanes] = {}, ww[kLanes] = {};
  const acc_t m_s_scaled = m_s * inv_tau, m_t_scaled = m_t * inv_tau, gap = m_t - y_ref;
  for_lanes<kLanes>(s, t, C, [&](int l, acc_t y, acc_t x) ZSKT_INLINE_INTO_CLONE {
    const acc_t e = exp_of(x * inv_tau - m_t_scaled);
    ss[l] += exp_of(y * inv_tau - m_s_scaled);
    st[l] += e;
    ww[l] += x == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : e * ((x - y) - gap);
  });
  const auto plus = [](acc_t a, acc_t b) ZSKT_INLINE_INTO_CLONE { return a + b; };
  sum_s = fold_lanes<kLanes>(ss, plus);
  sum_t = fold_lanes<kLanes>(st, plus);
  weighted = fold_lanes<kLanes>(ww, plus);
}

// The gradients that kStudent / kTeacher ask for (a frozen teacher's is never computed, nor written); the formulas
// are kl_state.h's.
template <bool kStudent, bool kTeacher, typename acc_t>
ZSKT_MULTIVERSION void row_gradients(const acc_t* __restrict__ s, const acc_t* __restrict__ t, int64_t C,
                                     acc_t inv_tau, const acc_t* stats_s, const acc_t* stats_t, acc_t scale,
                                     acc_t* __restrict__ grad_s, acc_t* __restrict__ grad_t) {
  // Local copies: the compiler cannot tell that the stores leave the statistics alone, and would neither keep them in
  // registers nor vectorise the loop.
  const acc_t row_s[2] = {stats_s[0], stats_s[1]}, row_t[4] = {stats_t[0], stats_t[1], stats_t[2], stats_t[3]};
  for (int64_t c = 0; c < C; ++c) {
    acc_t gs, gt;
    kl_gradients<kStudent, kTeacher>(t[c], s[c], inv_tau, row_s, row_t, scale, Exp{}, gs, gt);
    if constexpr (kStudent) grad_s[c] = gs;
    if constexpr (kTeacher) grad_t[c] = gt;
  }
}

// The state (kl_state.h) of n classes, in two passes over them: both maxima (and a class of the teacher's), then the
// sums relative to those. A side without a finite maximum sums relative to 0, so that an all -inf side sums to 0
// (a NaN one to NaN) and merges as empty.
template <int kLanes, typename acc_t>
KlState<acc_t> span_state_in_lanes(const acc_t* s, const acc_t* t, int64_t n, acc_t inv_tau) {
  auto state = KlState<acc_t>::empty();
  int lane_of_max;
  row_maxima<kLanes>(s, t, n, state.m_s, state.m_t, lane_of_max);
  const acc_t m_s = std::isfinite(state.m_s) ? state.m_s : acc_t(0);
  const acc_t m_t = std::isfinite(state.m_t) ? state.m_t : acc_t(0);
  if (std::isfinite(state.m_t)) state.y_ref = s[class_of_maximum<kLanes>(t, n, state.m_t, lane_of_max)];
  row_sums<kLanes>(s, t, n, inv_tau, m_s, m_t, state.y_ref, state.sum_s, state.sum_t, state.w);
  state.infinite = !std::isfinite(state.w);
  return state;
}

template <typename acc_t>
KlState<acc_t> span_state(const acc_t* s, const acc_t* t, int64_t n, acc_t inv_tau) {
  return n < kManyLanesFrom ? span_state_in_lanes<8>(s, t, n, inv_tau) : span_state_in_lanes<16>(s, t, n, inv_tau);
}

// Rows longer than kSegment classes are cut into segments of that many, each a unit of parallel work, so that a few
// long rows (a language model's vocabulary at a small batch) still spread over every thread. The cut does not depend on
// the thread count and the segments' states are merged in segment order, so results stay bitwise independent of it.
// Both rows' segments (in float) fit a core's L2 cache.
constexpr int64_t kSegment = 16384;

// The segments of B rows of C classes, numbered row by row (items); a row shorter than kSegment is one segment. Items
// in order lie end to end: items [begin, end) are the elements [offset(begin), offset(end)).
struct Segments {
  int64_t C, length, per_row;  // the last segment of a row may be shorter than length

  explicit Segments(int64_t C) : C(C), length(std::min(C, kSegment)), per_row((C + length - 1) / length) {}
  int64_t row(int64_t item) const { return item / per_row; }
  int64_t offset(int64_t item) const { return row(item) * C + (item % per_row) * length; }
  int64_t size(int64_t item) const { return std::min(length, C - (item % per_row) * length); }
  // Items per unit of parallel work: about 16,384 classes.
  int64_t grain() const { return std::max<int64_t>(1, kSegment / length); }
};

// bfloat16 and float16 logits are converted to float before they are worked on (c10's conversion inside a computing
// pass keeps the compiler from vectorising it), into a per-thread buffer, whole spans at a time: for the forward a
// segment, or as many short rows as fill kPiece classes; for the gradients kPiece elements, converted, computed and
// converted back in the L1 cache (4 * kPiece floats). At 10 classes a conversion per row cost more than the row's work.
constexpr int64_t kPiece = 1024;

// The n logits at src in the accumulation type: src itself, or converted into buffer.
template <typename scalar_t, typename acc_t>
const acc_t* in_accumulation_type(const scalar_t* src, int64_t n, acc_t* buffer) {
  if constexpr (kWidened<scalar_t>) {
    convert(src, buffer, n);
    return buffer;
  } else {
    return src;
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
    const Segments cut(C);
    const bool whole_rows = cut.per_row == 1;
    std::vector<KlState<acc_t>> states(whole_rows ? 0 : B * cut.per_row);
    at::parallel_for(0, B * cut.per_row, cut.grain(), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> wide(kWidened<scalar_t> ? 2 * std::max(cut.length, kPiece) : 0);
      for (int64_t item = begin, count; item < end; item += count) {
        // count segments converted together: short whole rows of a widened type, else one
        count = kWidened<scalar_t> && whole_rows ? std::clamp<int64_t>(kPiece / C, 1, end - item) : 1;
        const int64_t at = cut.offset(item), n = cut.size(item);
        const acc_t* s_wide = in_accumulation_type(sp + at, count * n, wide.data());
        const acc_t* t_wide = in_accumulation_type(tp + at, count * n, wide.data() + count * n);
        for (int64_t j = 0; j < count; ++j) {
          const auto state = span_state(s_wide + j * n, t_wide + j * n, n, inv_tau);
          const int64_t b = cut.row(item + j);
          if (whole_rows) state.finish(inv_tau, klp + b, ssp + 2 * b, stp + 4 * b);
          else states[item + j] = state;
        }
      }
    });
    for (int64_t b = 0; !whole_rows && b < B; ++b) {
      auto state = states[b * cut.per_row];
      for (int64_t j = 1; j < cut.per_row; ++j) state.merge(states[b * cut.per_row + j], inv_tau);
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
  const Segments cut(C);
  at::parallel_for(0, B * cut.per_row, cut.grain(), [&](int64_t begin, int64_t end) {
    if constexpr (kWidened<scalar_t>) {
      std::vector<acc_t> wide(4 * kPiece);
      acc_t *ws = wide.data(), *wt = ws + kPiece, *gs = wt + kPiece, *gt = gs + kPiece;
      const int64_t last = cut.offset(end);
      for (int64_t at = cut.offset(begin); at < last; at += kPiece) {
        const int64_t m = std::min(kPiece, last - at);
        convert(sp + at, ws, m);
        convert(tp + at, wt, m);
        for (int64_t i = at, next; i < at + m; i = next) {  // the piece's part of each row it meets
          const int64_t b = i / C;
          next = std::min((b + 1) * C, at + m);
          row_gradients<kStudent, kTeacher>(ws + (i - at), wt + (i - at), next - i, inv_tau, ssp + 2 * b,
                                            stp + 4 * b, gp[b] * inv_tau, gs + (i - at), gt + (i - at));
        }
        if (kStudent) convert(gs, gsp + at, m);
        if (kTeacher) convert(gt, gtp + at, m);
      }
    } else {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = cut.row(item), at = cut.offset(item);
        row_gradients<kStudent, kTeacher>(sp + at, tp + at, cut.size(item), inv_tau, ssp + 2 * b, stp + 4 * b,
                                          gp[b] * inv_tau, kStudent ? gsp + at : nullptr,
                                          kTeacher ? gtp + at : nullptr);
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
