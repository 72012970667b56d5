// Op schemas of the zskt_fast library and the Python module that loads them.
//
// The forward ops return per-row / per-sample partial results in float32 (float64 for float64 inputs) together with
// the small statistics their backward needs; the Python layer applies the reduction, so one kernel serves every
// reduction and the autograd formula of a reduction stays PyTorch's own. Their autograd is in autograd.cpp.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(zskt_fast, m) {
  // kl_rows[b] = sum_c p_t[b,c] (log p_t[b,c] - log p_s[b,c]), p = softmax(logits / temperature);
  // also returns the row statistics (csrc/kl_state.h), with x the teacher's logits, y the student's, maxima in logit
  // units: student_stats [B, 2] = (m_s, log sum_c exp((y_c - m_s) / T)), teacher_stats [B, 4] = (m_t,
  // log sum_c exp((x_c - m_t) / T), y at a class where x reaches m_t, R). Kept apart (not added into one log-sum-exp)
  // so that log p = (x - m) / T - log-sum stays exact for the largest logits when the softmax saturates, and so that
  // the teacher gradient does not cancel there.
  m.def("kl_divergence_forward(Tensor student_logits, Tensor teacher_logits, float temperature)"
        " -> (Tensor kl_rows, Tensor student_stats, Tensor teacher_stats)");
  // Gradients of sum_b grad_rows[b] * kl_rows[b] with respect to the logit sets that output_mask names (student,
  // teacher); a gradient not asked for is not computed and comes back as an empty [0] tensor.
  m.def("kl_divergence_backward(Tensor grad_rows, Tensor student_logits, Tensor teacher_logits,"
        " Tensor student_stats, Tensor teacher_stats, float temperature, bool[2] output_mask)"
        " -> (Tensor grad_student, Tensor grad_teacher)");
  // sq_diff[b] = sum_hw (q_s[b,hw] - q_t[b,hw])^2 with q the L2-normalised channel mean of squares;
  // also returns q_s, q_t [B, H*W] and the norms of the unnormalised maps [B].
  m.def("attention_transfer_forward(Tensor student_features, Tensor teacher_features)"
        " -> (Tensor sq_diff, Tensor student_attention, Tensor teacher_attention, Tensor student_norm,"
        " Tensor teacher_norm)");
  // Gradient of sum_b grad_sq_diff[b] * sq_diff[b] with respect to one side's features: `attention` and `norm`
  // belong to that side, `other_attention` to the other side (the formula is symmetric).
  m.def("attention_transfer_backward(Tensor grad_sq_diff, Tensor features, Tensor attention, Tensor other_attention,"
        " Tensor norm) -> Tensor");
  // The per-channel mean and biased variance over (N, H, W) of a [B, C, H, W] map, each [C] (a BatchNorm layer's batch
  // statistics; the batch-norm statistics prior compares them with the layer's running statistics).
  m.def("bn_statistics_forward(Tensor input) -> (Tensor mean, Tensor var)");
  // Gradient of sum_c grad_mean[c] * mean[c] + grad_var[c] * var[c] with respect to the map.
  m.def("bn_statistics_backward(Tensor grad_mean, Tensor grad_var, Tensor input, Tensor mean) -> Tensor");
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "zskt_fast compiled kernels; the ops live in torch.ops.zskt_fast";
#ifdef ZSKT_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
}
