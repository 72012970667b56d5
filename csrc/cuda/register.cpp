// CUDA implementations of the zskt_fast ops: argument checks, allocation and layout on the host, then the launchers
// of csrc/cuda/*.cu on the current stream. Nothing here synchronises or reads device memory, so the ops can be
// captured in CUDA graphs. Features that are not NCHW-contiguous (channels_last included) are copied to NCHW first,
// and their gradient is returned in the input's layout.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../checks.h"
#include "launchers.h"

namespace zskt {
namespace {

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::Float32;
    case at::kDouble: return cuda::DType::Float64;
    case at::kHalf: return cuda::DType::Float16;
    case at::kBFloat16: return cuda::DType::BFloat16;
    default: TORCH_CHECK(false, "zskt_fast: unsupported dtype ", t);
  }
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "zskt_fast: launching ", what, " failed with CUDA error ", code);
}

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_divergence_forward_cuda(const at::Tensor& student_logits,
                                                                         const at::Tensor& teacher_logits,
                                                                         double temperature) {
  check_logit_pair(student_logits, teacher_logits);
  TORCH_CHECK(temperature > 0, "zskt_fast: temperature must be positive");
  const c10::cuda::CUDAGuard guard(student_logits.device());
  const auto s = student_logits.contiguous();
  const auto t = teacher_logits.contiguous();
  const int64_t B = s.size(0), C = s.size(1);
  auto kl = at::empty({B}, s.options().dtype(accumulation_type(s)));
  auto stats_s = at::empty({B, 2}, kl.options());
  auto stats_t = at::empty({B, 4}, kl.options());
  const auto dtype = to_dtype(s.scalar_type());
  // From the caching allocator, on the current stream: safe inside CUDA graphs.
  auto workspace = at::empty({cuda::kl_forward_workspace_bytes(dtype, B, C)}, s.options().dtype(at::kByte));
  check_launch(cuda::launch_kl_forward(dtype, s.const_data_ptr(), t.const_data_ptr(), B, C, 1.0 / temperature,
                                       kl.mutable_data_ptr(), stats_s.mutable_data_ptr(), stats_t.mutable_data_ptr(),
                                       workspace.numel() > 0 ? workspace.mutable_data_ptr() : nullptr,
                                       current_stream()),
               "kl_divergence_forward");
  return {kl, stats_s, stats_t};
}

std::tuple<at::Tensor, at::Tensor> kl_divergence_backward_cuda(const at::Tensor& grad_rows,
                                                              const at::Tensor& student_logits,
                                                              const at::Tensor& teacher_logits,
                                                              const at::Tensor& student_stats,
                                                              const at::Tensor& teacher_stats, double temperature,
                                                              std::array<bool, 2> output_mask) {
  check_logit_pair(student_logits, teacher_logits);
  const c10::cuda::CUDAGuard guard(student_logits.device());
  const auto s = student_logits.contiguous();
  const auto t = teacher_logits.contiguous();
  const int64_t B = s.size(0), C = s.size(1);
  const auto acc = accumulation_type(s);
  check_kl_row_statistics(grad_rows, student_stats, teacher_stats, B);
  const auto g = grad_rows.to(acc).contiguous();
  const auto ls = student_stats.to(acc).contiguous();
  const auto lt = teacher_stats.to(acc).contiguous();
  const auto [want_s, want_t] = output_mask;
  auto grad_s = want_s ? at::empty({B, C}, s.options()) : at::empty({0}, s.options());
  auto grad_t = want_t ? at::empty({B, C}, t.options()) : at::empty({0}, t.options());
  if (!want_s && !want_t) return {grad_s, grad_t};
  check_launch(cuda::launch_kl_backward(to_dtype(s.scalar_type()), g.const_data_ptr(), s.const_data_ptr(),
                                        t.const_data_ptr(), ls.const_data_ptr(), lt.const_data_ptr(), B, C,
                                        1.0 / temperature, want_s ? grad_s.mutable_data_ptr() : nullptr,
                                        want_t ? grad_t.mutable_data_ptr() : nullptr, current_stream()),
               "kl_divergence_backward");
  return {grad_s, grad_t};
}

void check_batch_fits_grid(const at::Tensor& x) {
  TORCH_CHECK(x.size(0) <= 65535, "zskt_fast: the CUDA kernels take at most 65535 samples, got ", x.size(0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_transfer_forward_cuda(
    const at::Tensor& student_features, const at::Tensor& teacher_features) {
  check_feature_pair(student_features, teacher_features);
  check_batch_fits_grid(student_features);
  const c10::cuda::CUDAGuard guard(student_features.device());
  const auto s = student_features.contiguous();
  const auto t = teacher_features.contiguous();
  const int64_t B = s.size(0), HW = s.size(2) * s.size(3);
  const auto opts = s.options().dtype(accumulation_type(s));
  auto sq_diff = at::empty({B}, opts);
  auto q_s = at::empty({B, HW}, opts);
  auto q_t = at::empty({B, HW}, opts);
  auto norm_s = at::empty({B}, opts);
  auto norm_t = at::empty({B}, opts);
  check_launch(cuda::launch_at_forward(to_dtype(s.scalar_type()), s.const_data_ptr(), s.size(1), t.const_data_ptr(),
                                       t.size(1), B, HW, q_s.mutable_data_ptr(), q_t.mutable_data_ptr(),
                                       norm_s.mutable_data_ptr(), norm_t.mutable_data_ptr(),
                                       sq_diff.mutable_data_ptr(), current_stream()),
               "attention_transfer_forward");
  return {sq_diff, q_s, q_t, norm_s, norm_t};
}

at::Tensor attention_transfer_backward_cuda(const at::Tensor& grad_sq_diff, const at::Tensor& features,
                                            const at::Tensor& attention, const at::Tensor& other_attention,
                                            const at::Tensor& norm) {
  check_features(features, "features");
  check_batch_fits_grid(features);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto x = features.contiguous();
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(attention.sizes() == at::IntArrayRef({B, HW}) && other_attention.sizes() == attention.sizes(),
              "zskt_fast: attention maps must be [B, H*W] = [", B, ", ", HW, "]");
  TORCH_CHECK(grad_sq_diff.numel() == B && norm.numel() == B, "zskt_fast: expected [B] per-sample statistics");
  const auto acc = accumulation_type(x);
  const auto g = grad_sq_diff.to(acc).contiguous();
  const auto q = attention.to(acc).contiguous();
  const auto qo = other_attention.to(acc).contiguous();
  const auto n = norm.to(acc).contiguous();
  auto grad = at::empty_like(features);
  auto out = grad.is_contiguous() ? grad : at::empty_like(x, at::MemoryFormat::Contiguous);
  check_launch(cuda::launch_at_backward(to_dtype(x.scalar_type()), g.const_data_ptr(), x.const_data_ptr(),
                                        q.const_data_ptr(), qo.const_data_ptr(), n.const_data_ptr(), B, C, HW,
                                        out.mutable_data_ptr(), current_stream()),
               "attention_transfer_backward");
  if (!out.is_same(grad)) grad.copy_(out);
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(zskt_fast, CUDA, m) {
  m.impl("kl_divergence_forward", &kl_divergence_forward_cuda);
  m.impl("kl_divergence_backward", &kl_divergence_backward_cuda);
  m.impl("attention_transfer_forward", &attention_transfer_forward_cuda);
  m.impl("attention_transfer_backward", &attention_transfer_backward_cuda);
}

}  // namespace zskt
