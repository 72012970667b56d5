"""The two losses of Algorithm 1, composed from the fused ops."""
from __future__ import annotations

import torch

from . import _checks
from .attention_transfer import attention_transfer
from .kl_divergence import kl_divergence


def zskt_student_loss(student_logits, teacher_logits, student_features, teacher_features, *, beta: float = 250.0,
                      temperature: float = 1.0, reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """KL(T || S) + beta * sum_l AT(student_features[l], teacher_features[l]).

    `reduction` applies to the KL term; the attention term is always the spec's mean over samples and positions
    (added to every row for reduction="none"). beta = 0 disables attention transfer: the feature maps are checked but
    no attention kernel runs, and they receive no gradient.
    """
    _checks.check_logits(student_logits, teacher_logits)
    _checks.check_feature_pairs(student_features, teacher_features, allow_empty=True)
    _checks.check_non_negative(beta, "beta")
    if student_features:
        _checks.check_same_device(student_logits, student_features[0], "logits and feature maps")
    kl = kl_divergence(student_logits, teacher_logits, temperature=temperature, reduction=reduction, backend=backend)
    if beta == 0 or not student_features:
        return kl
    return kl + attention_transfer(student_features, teacher_features, beta=beta, backend=backend)


def zskt_generator_loss(student_logits, teacher_logits, *, temperature: float = 1.0, reduction: str = "mean",
                        backend: str = "auto") -> torch.Tensor:
    """-KL(T || S): the generator ascends the divergence, so gradient reaches it through both logit sets."""
    return -kl_divergence(student_logits, teacher_logits, temperature=temperature, reduction=reduction,
                          backend=backend)
