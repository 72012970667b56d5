"""Thin nn.Module wrappers over the loss ops, for code that composes losses as modules."""
from __future__ import annotations

from torch import nn

from .common import check_choice, check_non_negative
from .ops import (BACKENDS, DEFAULT_BETA, DEFAULT_TEMPERATURE, attention_transfer, kl_divergence, zskt_generator_loss,
                  zskt_student_loss)
from .ops._checks import check_kl_options


def _check(*, backend: str, beta: float | None = None, temperature: float | None = None,
           reduction: str | None = None) -> None:
    """The options a wrapper holds, checked when it is built rather than at its first call."""
    check_choice(backend, BACKENDS, "backend")
    if beta is not None:
        check_non_negative(beta, "beta")
    if temperature is not None:
        check_kl_options(temperature, reduction)


class KLDivergence(nn.Module):
    """`zskt_fast.kl_divergence` as a module: forward(student_logits, teacher_logits)."""

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        _check(backend=backend, temperature=temperature, reduction=reduction)
        self.temperature, self.reduction, self.backend = temperature, reduction, backend

    def forward(self, student_logits, teacher_logits):
        return kl_divergence(student_logits, teacher_logits, temperature=self.temperature, reduction=self.reduction,
                             backend=self.backend)

    def extra_repr(self):
        return f"temperature={self.temperature}, reduction={self.reduction!r}, backend={self.backend!r}"


class AttentionTransfer(nn.Module):
    """`zskt_fast.attention_transfer` as a module: forward(student_features, teacher_features)."""

    def __init__(self, beta: float = DEFAULT_BETA, backend: str = "auto"):
        super().__init__()
        _check(backend=backend, beta=beta)
        self.beta, self.backend = beta, backend

    def forward(self, student_features, teacher_features):
        return attention_transfer(student_features, teacher_features, beta=self.beta, backend=self.backend)

    def extra_repr(self):
        return f"beta={self.beta}, backend={self.backend!r}"


class ZSKTStudentLoss(nn.Module):
    """`zskt_fast.zskt_student_loss` as a module: forward(student_logits, teacher_logits, student_features,
    teacher_features)."""

    def __init__(self, beta: float = DEFAULT_BETA, temperature: float = DEFAULT_TEMPERATURE, reduction: str = "mean",
                 backend: str = "auto"):
        super().__init__()
        _check(backend=backend, beta=beta, temperature=temperature, reduction=reduction)
        self.beta, self.temperature, self.reduction, self.backend = beta, temperature, reduction, backend

    def forward(self, student_logits, teacher_logits, student_features, teacher_features):
        return zskt_student_loss(student_logits, teacher_logits, student_features, teacher_features, beta=self.beta,
                                 temperature=self.temperature, reduction=self.reduction, backend=self.backend)

    def extra_repr(self):
        return (f"beta={self.beta}, temperature={self.temperature}, reduction={self.reduction!r}, "
                f"backend={self.backend!r}")


class ZSKTGeneratorLoss(nn.Module):
    """`zskt_fast.zskt_generator_loss` as a module: forward(student_logits, teacher_logits)."""

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        _check(backend=backend, temperature=temperature, reduction=reduction)
        self.temperature, self.reduction, self.backend = temperature, reduction, backend

    def forward(self, student_logits, teacher_logits):
        return zskt_generator_loss(student_logits, teacher_logits, temperature=self.temperature,
                                   reduction=self.reduction, backend=self.backend)

    def extra_repr(self):
        return f"temperature={self.temperature}, reduction={self.reduction!r}, backend={self.backend!r}"
