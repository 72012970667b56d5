// Launchers of the CUDA kernels, callable without CUDA or torch headers (the kernels' translation units include no
// torch headers, which keeps nvcc fast; csrc/cuda/register.cpp allocates, checks and calls these).
#pragma once
#include <cstdint>

namespace zskt::cuda {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Every launcher enqueues on `stream` (a cudaStream_t), never synchronises, and returns the launch error code
// (cudaError_t as int, 0 on success).

// kl[b] and the row statistics stats_s [B, 2], stats_t [B, 4] of ../kl_state.h (accumulation type: double for
// Float64, else float). `workspace` holds kl_forward_workspace_bytes(dtype, B, C) bytes (the partial states of long
// rows; null when that is 0).
int64_t kl_forward_workspace_bytes(DType dtype, int64_t B, int64_t C);
int launch_kl_forward(DType dtype, const void* student, const void* teacher, int64_t B, int64_t C, double inv_tau,
                      void* kl, void* stats_s, void* stats_t, void* workspace, void* stream);
// grad_s, grad_t [B, C] in the input dtype from the [B] upstream gradient and the forward's row statistics; a null
// grad_s or grad_t is neither computed nor written.
int launch_kl_backward(DType dtype, const void* grad_rows, const void* student, const void* teacher,
                       const void* stats_s, const void* stats_t, int64_t B, int64_t C, double inv_tau, void* grad_s,
                       void* grad_t, void* stream);

// NCHW-contiguous features. a_s, a_t [B, HW] receive the channel means of squares, then q; norms [B]; sq_diff [B].
int launch_at_forward(DType dtype, const void* student, int64_t C_s, const void* teacher, int64_t C_t, int64_t B,
                      int64_t HW, void* q_s, void* q_t, void* norm_s, void* norm_t, void* sq_diff, void* stream);
// Gradient of one side's NCHW-contiguous features (out has the same shape and dtype).
int launch_at_backward(DType dtype, const void* grad_sq_diff, const void* features, const void* q, const void* q_other,
                       const void* norm, int64_t B, int64_t C, int64_t HW, void* out, void* stream);

}  // namespace zskt::cuda
