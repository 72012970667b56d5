// Argument checks shared by the CPU and CUDA implementations of the ops. The Python layer checks everything first,
// with messages that name the argument and layer; these guard direct calls of torch.ops.zskt_fast.*.
#pragma once
#include <ATen/ATen.h>

namespace zskt {

inline void check_logit_pair(const at::Tensor& s, const at::Tensor& t) {
  TORCH_CHECK(s.dim() == 2 && t.dim() == 2, "zskt_fast: logits must be [B, C], got ", s.sizes(), " and ", t.sizes());
  TORCH_CHECK(s.sizes() == t.sizes(), "zskt_fast: student and teacher logits differ in shape: ", s.sizes(), " vs ",
              t.sizes());
  TORCH_CHECK(s.scalar_type() == t.scalar_type(), "zskt_fast: student and teacher logits differ in dtype");
  TORCH_CHECK(s.numel() > 0, "zskt_fast: empty logits");
}

inline void check_features(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, "zskt_fast: ", name, " must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.numel() > 0, "zskt_fast: ", name, " is empty: ", x.sizes());
}

inline void check_feature_pair(const at::Tensor& s, const at::Tensor& t) {
  check_features(s, "student_features");
  check_features(t, "teacher_features");
  TORCH_CHECK(s.size(0) == t.size(0) && s.size(2) == t.size(2) && s.size(3) == t.size(3),
              "zskt_fast: student and teacher features differ in batch or spatial size: ", s.sizes(), " vs ",
              t.sizes());
  TORCH_CHECK(s.scalar_type() == t.scalar_type(), "zskt_fast: student and teacher features differ in dtype");
}

// The [B] upstream gradient and the forward's row statistics (student [B, 2], teacher [B, 4]) of a KL backward.
inline void check_kl_row_statistics(const at::Tensor& grad_rows, const at::Tensor& student_stats,
                                    const at::Tensor& teacher_stats, int64_t B) {
  TORCH_CHECK(grad_rows.numel() == B && student_stats.numel() == 2 * B && teacher_stats.numel() == 4 * B,
              "zskt_fast: kl_divergence_backward expects [B] grad_rows, [B, 2] student_stats and [B, 4] teacher_stats "
              "for B = ", B, ", got ", grad_rows.sizes(), ", ", student_stats.sizes(), " and ", teacher_stats.sizes());
}

// Kernels accumulate, and return losses and statistics, in float32; float64 inputs stay in float64.
inline at::ScalarType accumulation_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace zskt
