// The KL forward's per-row state over a set of classes, shared by the CPU kernel (a state per segment of a long row)
// and the CUDA kernels (a state per thread, merged by a fixed tree). Torch-free, for host and device.
//
// With x the teacher's logits, y the student's and tau = 1 / T, the state holds, in logit units,
//   m_t, sum_t   the teacher's maximum and sum exp((x - m_t) tau)
//   y_ref        y at the reference class: a class where x reaches m_t
//   w            sum over classes of e ((x - m_t) - (y - y_ref)), e = exp((x - m_t) tau)
//   m_s, sum_s   the student's maximum and sum exp((y - m_s) tau)
//   infinite     a class where the teacher is finite and the student -inf (the KL is +inf: p > 0 there, q = 0)
// With d = log p - log q, d - d_ref = ((x - m_t) - (y - y_ref)) tau, and KL = sum p d = d_ref + R with
// R = tau w / sum_t = sum p (d - d_ref). The teacher gradient p_c (d_c - KL) = p_c ((d_c - d_ref) - R): at a saturated
// row (p_ref near 1) it is -R at the reference class, a small number formed from small terms, where forming d_c - KL
// from the KL would cancel. Differences are taken in logit units before scaling by tau, so that they are exactly 0 at
// the reference class whether or not the compiler fuses the scaling into a multiply-add. The backward gets
// (m_t, log sum_t, y_ref, R) and (m_s, log sum_s).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define ZSKT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ZSKT_HOST_DEVICE inline
#endif

namespace zskt {

// The exponentials of the state and of the gradients: exp(a tau) is Exp{}(a * Exp::scale(tau)), and a natural-log
// quantity L enters an exponent as Exp::scale(L). NaturalExp is exp itself. Base2Exp folds log2(e) into the scale, so
// that a float exponential on a GPU is one ex2.approx.ftz instruction (expf takes 8 to 10, exp2f 4), within the same 2
// ulp; its results below 2^-126 (1.2e-38) flush to 0, on the host too so that the host emulation matches: no sum of
// these terms sees them, and a gradient moves by less than 1.2e-38 times its scale. The scaled arguments round once
// more (tau log2(e): a change of the temperature below 1e-7; L log2(e)), an error of the size of their own rounding.
struct NaturalExp {
  template <typename A>
  ZSKT_HOST_DEVICE static A scale(A v) { return v; }
  template <typename A>
  ZSKT_HOST_DEVICE A operator()(A x) const {
    using std::exp;
    return exp(x);
  }
};

struct Base2Exp {
  template <typename A>
  ZSKT_HOST_DEVICE static A scale(A v) { return v * A(1.44269504088896340736); }
  template <typename A>
  ZSKT_HOST_DEVICE A operator()(A x) const {
    using std::exp2;
    if constexpr (std::is_same_v<A, float>) {
#if defined(__CUDA_ARCH__)
      float result;
      asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(x));
      return result;
#else
      const float result = exp2(x);
      return result < 0x1p-126f ? 0.0f : result;
#endif
    } else {
      return exp2(x);
    }
  }
};

template <typename A, typename Exp = NaturalExp>
struct KlState {
  A m_t, sum_t, y_ref, w, m_s, sum_s;
  bool infinite;

  ZSKT_HOST_DEVICE static KlState empty() {
    return {-INFINITY, A(0), A(0), A(0), -INFINITY, A(0), false};
  }

  // sum exp((x - m) tau) re-expressed relative to new_m >= m; an empty sum stays 0 (exp(-inf - -inf) would be NaN), a
  // NaN one stays NaN.
  ZSKT_HOST_DEVICE static A rescaled(A sum, A m, A new_m, A tau) {
    return sum == A(0) ? A(0) : sum * Exp{}((m - new_m) * Exp::scale(tau));
  }

  // Folds in one class, teacher logit x and student logit y (online: maxima and reference move as larger logits come).
  ZSKT_HOST_DEVICE void add(A x, A y, A tau) {
    const Exp exp_of;
    const A k = Exp::scale(tau);
    if (y > m_s) {
      sum_s = rescaled(sum_s, m_s, y, tau) + A(1);
      m_s = y;
    } else if (y != -INFINITY) {
      sum_s += exp_of((y - m_s) * k);  // a NaN y makes sum_s NaN
    }
    if (x == -INFINITY) return;  // no teacher mass: the class drops out (a masked class)
    if (y == -INFINITY) infinite = true;
    if (x > m_t) {
      rebase(x, y, tau);
      sum_t += A(1);
    } else {
      const A a = x - m_t, e = exp_of(a * k);  // a NaN x makes sum_t NaN
      sum_t += e;
      if (e > A(0)) w += e * (a - (y - y_ref));
    }
  }

  // Re-expresses the teacher's sums relative to a new maximum new_m >= m_t whose class has student logit new_y.
  ZSKT_HOST_DEVICE void rebase(A new_m, A new_y, A tau) {
    if (sum_t != A(0)) {
      const A f = Exp{}((m_t - new_m) * Exp::scale(tau));
      // every earlier term e (a - b) becomes f e (a - b + (m_t - new_m) + (new_y - y_ref))
      w = f == A(0) ? A(0) : f * (w + ((m_t - new_m) + (new_y - y_ref)) * sum_t);
      sum_t *= f;
    }
    m_t = new_m;
    y_ref = new_y;
  }

  // Merges the state of other classes (on a tie of the teacher's maximum this state's reference stays).
  ZSKT_HOST_DEVICE void merge(KlState other, A tau) {
    const A new_m_s = m_s > other.m_s ? m_s : other.m_s;
    sum_s = rescaled(sum_s, m_s, new_m_s, tau) + rescaled(other.sum_s, other.m_s, new_m_s, tau);
    m_s = new_m_s;
    infinite = infinite || other.infinite;
    if (other.m_t > m_t) {
      rebase(other.m_t, other.y_ref, tau);
    } else if (other.sum_t != A(0)) {
      other.rebase(m_t, y_ref, tau);
    }
    sum_t += other.sum_t;
    w += other.w;
  }

  // The row's KL and the statistics the backward needs: stats_s = (m_s, log sum_s), stats_t = (m_t, log sum_t, y_ref,
  // R). A row with no finite maximum (all -inf, or a +inf) or a NaN logit has a NaN KL.
  ZSKT_HOST_DEVICE void finish(A tau, A* kl, A* stats_s, A* stats_t) const {
    using std::isinf;
    using std::isnan;
    using std::log;
    const bool finite = !isinf(m_s) && !isinf(m_t) && !isnan(sum_s) && !isnan(sum_t);
    const A log_sum_s = finite ? log(sum_s) : A(0), log_sum_t = finite ? log(sum_t) : A(0);
    const A r = finite ? tau * w / sum_t : A(0);
    *kl = !finite ? A(NAN) : infinite ? A(INFINITY) : r + ((log_sum_s - log_sum_t) - (y_ref - m_s) * tau);
    stats_s[0] = m_s;
    stats_s[1] = log_sum_s;
    stats_t[0] = m_t;
    stats_t[1] = log_sum_t;
    stats_t[2] = y_ref;
    stats_t[3] = r;
  }
};

// The gradients of one class (teacher logit x, student logit y) that kStudent / kTeacher ask for, from the row's
// statistics (see KlState::finish); scale = upstream gradient / T. A class whose teacher probability underflows to 0
// gets a teacher gradient of 0 (p log p = 0 there, as F.kl_div's xlogy). exp_of is the caller's exponential, with a
// scale as NaturalExp's (the CPU kernel's is one its compiler vectorises).
template <bool kStudent, bool kTeacher, typename A, typename Exp>
ZSKT_HOST_DEVICE void kl_gradients(A x, A y, A tau, const A* stats_s, const A* stats_t, A scale, Exp exp_of,
                                   A& grad_s, A& grad_t) {
  const A k = Exp::scale(tau);
  const A a = x - stats_t[0], p = exp_of(a * k - Exp::scale(stats_t[1]));
  if constexpr (kStudent) grad_s = scale * (exp_of((y - stats_s[0]) * k - Exp::scale(stats_s[1])) - p);
  if constexpr (kTeacher) grad_t = p == A(0) ? A(0) : scale * p * ((a - (y - stats_t[2])) * tau - stats_t[3]);
}

}  // namespace zskt
