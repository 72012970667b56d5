"""The two losses of Algorithm 1, and the few-shot KD+AT baseline's, composed from the fused ops; arguments are
checked once, here."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import accumulation_dtype, check_non_negative, check_positive
from . import _checks, _library
from ._checks import DEFAULT_BETA, DEFAULT_TEMPERATURE

# Knowledge distillation with attention transfer as Zagoruyko & Komodakis (2017) run it: alpha 0.9, T 4, and their
# beta 1000 applied with their factor 1/2 (their AT term is (beta / 2) * sum_l mean (q_s - q_t)^2: our op's beta 500).
KD_ALPHA = 0.9
KD_TEMPERATURE = 4.0
KD_BETA = 500.0
from .attention_transfer import checked_attention_transfer
from .kl_divergence import checked_kl_divergence, kl_divergence


def zskt_student_loss(student_logits, teacher_logits, student_features, teacher_features, *,
                      beta: float = DEFAULT_BETA, temperature: float = DEFAULT_TEMPERATURE, reduction: str = "mean",
                      backend: str = "auto") -> torch.Tensor:
    """KL(T || S) + beta * sum_l AT(student_features[l], teacher_features[l]).

    `reduction` applies to the KL term; the attention term is always the mean over samples and positions (added to
    every row for reduction="none"). beta = 0 disables attention transfer: the feature maps are checked but no
    attention kernel runs, and they receive no gradient.
    """
    _checks.check_logits(student_logits, teacher_logits)
    _checks.check_kl_options(temperature, reduction)
    _checks.check_feature_pairs(student_features, teacher_features, allow_empty=True)
    check_non_negative(beta, "beta")
    if student_features:
        _checks.check_same_device(student_logits, student_features[0], "logits and feature maps")
        if student_features[0].shape[0] != student_logits.shape[0]:
            raise ValueError(f"the logits hold {student_logits.shape[0]} samples and the feature maps "
                             f"{student_features[0].shape[0]}: they must come from the same batch")
    backend = _library.resolve_backend(backend, student_logits.device)
    kl = checked_kl_divergence(student_logits, teacher_logits, temperature, reduction, backend)
    if beta == 0 or not student_features:
        return kl
    return kl + checked_attention_transfer(student_features, teacher_features, beta, backend)


def zskt_generator_loss(student_logits, teacher_logits, *, temperature: float = DEFAULT_TEMPERATURE,
                        reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """-KL(T || S): the generator ascends the divergence, so gradient reaches it through both logit sets."""
    return -kl_divergence(student_logits, teacher_logits, temperature=temperature, reduction=reduction,
                          backend=backend)


def kd_at_loss(student_logits, teacher_logits, labels, student_features=(), teacher_features=(), *,
               alpha: float = KD_ALPHA, temperature: float = KD_TEMPERATURE, beta: float = KD_BETA,
               backend: str = "auto") -> torch.Tensor:
    """(1 - alpha) * CE(labels, S) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + beta * sum_l AT_l: the
    few-shot KD+AT baseline of the paper (Zagoruyko & Komodakis, 2017). The KL is the mean over samples of the sum over
    classes (reduction "batchmean"); the attention term is the fused op's (mean over samples and positions), so the AT
    paper's beta 1000 with its factor 1/2 is beta 500 here. beta = 0: KD alone."""
    _checks.check_logits(student_logits, teacher_logits)
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be a [B] int64 tensor for logits of shape {tuple(student_logits.shape)}, got "
                         + (f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                            else type(labels).__name__))
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    check_positive(temperature, "temperature")
    check_non_negative(beta, "beta")
    _checks.check_feature_pairs(student_features, teacher_features, allow_empty=True)
    backend = _library.resolve_backend(backend, student_logits.device)
    cross_entropy = F.cross_entropy(student_logits.to(accumulation_dtype(student_logits.dtype)), labels)
    loss = (1 - alpha) * cross_entropy + alpha * temperature ** 2 * \
        checked_kl_divergence(student_logits, teacher_logits, temperature, "batchmean", backend)
    if beta == 0 or not student_features:
        return loss
    return loss + checked_attention_transfer(student_features, teacher_features, beta, backend)
