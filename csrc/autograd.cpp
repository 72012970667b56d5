// Autograd of the compiled forward ops, for CPU and CUDA tensors alike: which backward op to call, with what.
//
// In C++ rather than through torch.library.register_autograd because a Python autograd formula runs Python on every
// call, with or without gradients (4 to 20 microseconds, more than the whole KL kernel at CIFAR's 10 classes). The
// forward calls the op below the autograd key; the backward calls the backward op through the dispatcher, so
// torch.compile traces both as ops. The Triton ops keep their formula in Python (they are Python themselves).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace zskt {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using KlForward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double);
using KlBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, const at::Tensor&, double,
                                                      std::array<bool, 2>);
using AtForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&,
                                                                                        const at::Tensor&);
using AtBackward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&);
using BnForward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&);
using BnBackward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

class KlDivergence : public torch::autograd::Function<KlDivergence> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student_logits,
                               const at::Tensor& teacher_logits, double temperature) {
    static const auto forward_op = op<KlForward>("zskt_fast::kl_divergence_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [rows, student_stats, teacher_stats] = forward_op.call(student_logits, teacher_logits, temperature);
    ctx->save_for_backward({student_logits, teacher_logits, student_stats, teacher_stats});
    ctx->saved_data["temperature"] = temperature;
    ctx->mark_non_differentiable({student_stats, teacher_stats});
    return {rows, student_stats, teacher_stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<KlBackward>("zskt_fast::kl_divergence_backward");
    const auto saved = ctx->get_saved_variables();
    // The teacher side is wanted by the generator step only: a frozen teacher's gradient is never computed.
    const std::array<bool, 2> wanted{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    auto [grad_student, grad_teacher] =
        backward_op.call(grads[0], saved[0], saved[1], saved[2], saved[3], ctx->saved_data["temperature"].toDouble(),
                         wanted);
    return {wanted[0] ? grad_student : at::Tensor(), wanted[1] ? grad_teacher : at::Tensor(), at::Tensor()};
  }
};

class AttentionTransfer : public torch::autograd::Function<AttentionTransfer> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student_features,
                               const at::Tensor& teacher_features) {
    static const auto forward_op = op<AtForward>("zskt_fast::attention_transfer_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [sq_diff, q_student, q_teacher, norm_student, norm_teacher] =
        forward_op.call(student_features, teacher_features);
    ctx->save_for_backward({student_features, teacher_features, q_student, q_teacher, norm_student, norm_teacher});
    ctx->mark_non_differentiable({q_student, q_teacher, norm_student, norm_teacher});
    return {sq_diff, q_student, q_teacher, norm_student, norm_teacher};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<AtBackward>("zskt_fast::attention_transfer_backward");
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_student, grad_teacher;
    // The formula is symmetric: each side's gradient takes its own map and norm and the other side's map.
    if (ctx->needs_input_grad(0)) grad_student = backward_op.call(grads[0], saved[0], saved[2], saved[3], saved[4]);
    if (ctx->needs_input_grad(1)) grad_teacher = backward_op.call(grads[0], saved[1], saved[3], saved[2], saved[5]);
    return {grad_student, grad_teacher};
  }
};

class BnStatistics : public torch::autograd::Function<BnStatistics> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input) {
    static const auto forward_op = op<BnForward>("zskt_fast::bn_statistics_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [mean, var] = forward_op.call(input);
    ctx->save_for_backward({input, mean});
    return {mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<BnBackward>("zskt_fast::bn_statistics_backward");
    const auto saved = ctx->get_saved_variables();
    // A statistic that no loss used has no gradient: it contributes nothing.
    const auto grad_mean = grads[0].defined() ? grads[0] : at::zeros_like(saved[1]);
    const auto grad_var = grads[1].defined() ? grads[1] : at::zeros_like(saved[1]);
    return {backward_op.call(grad_mean, grad_var, saved[0], saved[1])};
  }
};

std::tuple<at::Tensor, at::Tensor> bn_statistics_forward_autograd(const at::Tensor& input) {
  auto out = BnStatistics::apply(input);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_divergence_forward_autograd(const at::Tensor& student_logits,
                                                                             const at::Tensor& teacher_logits,
                                                                             double temperature) {
  auto out = KlDivergence::apply(student_logits, teacher_logits, temperature);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_transfer_forward_autograd(
    const at::Tensor& student_features, const at::Tensor& teacher_features) {
  auto out = AttentionTransfer::apply(student_features, teacher_features);
  return {out[0], out[1], out[2], out[3], out[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(zskt_fast, Autograd, m) {
  m.impl("kl_divergence_forward", &kl_divergence_forward_autograd);
  m.impl("attention_transfer_forward", &attention_transfer_forward_autograd);
  m.impl("bn_statistics_forward", &bn_statistics_forward_autograd);
}

}  // namespace zskt
