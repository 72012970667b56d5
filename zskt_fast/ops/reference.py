"""The loss formulas in plain PyTorch: the `eager` backend and the reference every kernel is tested against.

These follow the authors' code: KL through `F.kl_div(log_softmax(s / T), softmax(t / T))` (the teacher side as
log-probabilities, which is the same value with gradients that stay finite when a probability underflows), attention maps through
`F.normalize(A.pow(2).mean(1).flatten(1))`. Inputs are upcast to float32 (float64 stays float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import DEFAULT_BETA, DEFAULT_TEMPERATURE


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def kl_divergence_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL_b = sum_c p_t (log p_t - log p_s) for every row b.

    The teacher side enters as log-probabilities (log_target): the value is the same as with probabilities, but where
    a teacher probability underflows to 0 its gradient stays finite (p_t * (log p_t - log p_s + 1), not 0 * log 0)."""
    log_p_student = F.log_softmax(_upcast(student_logits) / temperature, dim=1)
    log_p_teacher = F.log_softmax(_upcast(teacher_logits) / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=1)


def reduce_kl_rows(rows: torch.Tensor, reduction: str, num_classes: int) -> torch.Tensor:
    """'mean' divides by B*C like F.kl_div's default, 'batchmean' by B, 'sum' adds, 'none' keeps the rows."""
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / rows.shape[0]
    return total / (rows.shape[0] * num_classes)


def kl_divergence(student_logits, teacher_logits, temperature: float = DEFAULT_TEMPERATURE,
                  reduction: str = "mean") -> torch.Tensor:
    rows = kl_divergence_rows(student_logits, teacher_logits, temperature)
    return reduce_kl_rows(rows, reduction, student_logits.shape[1])


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """q[b, hw]: channel mean of squares, L2-normalised over each sample's H*W positions."""
    return F.normalize(_upcast(features).pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer_layer(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """mean over b and hw of (q_s - q_t)^2."""
    return (attention_map(student_features) - attention_map(teacher_features)).pow(2).mean()


def attention_transfer(student_features, teacher_features, beta: float = DEFAULT_BETA) -> torch.Tensor:
    return beta * sum(attention_transfer_layer(s, t) for s, t in zip(student_features, teacher_features))


def bn_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and biased variance over (N, H, W) of a [B, C, H, W] map: a BatchNorm layer's batch
    statistics in training mode."""
    x = _upcast(features)
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)


def prior_of_statistics(statistics, running_means, running_vars) -> torch.Tensor:
    """sum over layers l of ||running_var_l - var_l||_2 + ||running_mean_l - mean_l||_2 (norms, not squared), for
    the (mean_l, var_l) of `statistics`."""
    total = None
    for (mean, var), running_mean, running_var in zip(statistics, running_means, running_vars):
        term = torch.linalg.vector_norm(running_var.to(var.dtype) - var) + \
            torch.linalg.vector_norm(running_mean.to(mean.dtype) - mean)
        total = term if total is None else total + term
    return total


def bn_statistics_prior(inputs, running_means, running_vars) -> torch.Tensor:
    """The batch-norm statistics prior (DeepInversion, Yin et al. 2020; DFQ, Choi et al. 2020) of the inputs of a
    network's BatchNorm layers."""
    return prior_of_statistics([bn_statistics(x) for x in inputs], running_means, running_vars)
