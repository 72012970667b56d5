"""The two losses of Algorithm 1, composed from the fused ops; arguments are checked once, here."""
from __future__ import annotations

import torch

from ..common import check_non_negative
from . import _checks, _library
from ._checks import DEFAULT_BETA, DEFAULT_TEMPERATURE
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
