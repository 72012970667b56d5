"""The loss terms of the data-free distillation methods beside ZSKT, on logits and features (t: the teacher's logits,
s: the student's, on the same generated batch). Each is one function with its formula and its paper; docs/methods.md
lists them together. The batch-norm statistics prior, a pass over feature maps, is a fused op of its own
(ops/bn_statistics_prior.py); the adversarial KL is `zskt_generator_loss` (its reduction 'mean' for ZSKT,
'batchmean' for DFQ as the frameworks run it); the KD term uses the fused KL op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import check_positive
from . import _checks, _library
from .kl_divergence import checked_kl_divergence


def _logits(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def adversarial_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """-mean over samples and classes of |t - s|: the generator's term of DFAD (Fang et al. 2019), which maximises the
    student's L1 distance to the teacher."""
    return -logit_l1(student_logits, teacher_logits)


def logit_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """mean over samples and classes of |t - s|: the student's loss of DFAD."""
    _checks.check_logits(student_logits, teacher_logits)
    return (_logits(teacher_logits) - _logits(student_logits)).abs().mean()


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the teacher's logits against their own argmax, mean over samples: small when the teacher is
    confident on every generated image (DAFL, Chen et al. 2019; DFQ, Choi et al. 2020)."""
    _checks.check_logits(teacher_logits, teacher_logits)
    logits = _logits(teacher_logits)
    return F.cross_entropy(logits, logits.argmax(dim=1))


def class_balance_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """sum_k p_k log p_k of p, the teacher's softmax averaged over the batch (minus the entropy of the mean
    prediction): smallest when the batch's images spread evenly over the classes (DAFL's information entropy term;
    DFQ)."""
    _checks.check_logits(teacher_logits, teacher_logits)
    return class_balance_of(mean_prediction(teacher_logits))


def mean_prediction(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's softmax averaged over the batch, [C]."""
    return F.softmax(_logits(teacher_logits), dim=1).mean(dim=0)


def class_balance_of(mean_p: torch.Tensor) -> torch.Tensor:
    """sum_k p_k log p_k of a batch's mean prediction p (the class-balance term from p: a data-parallel run gives it
    the global batch's p)."""
    return (mean_p * torch.log(mean_p)).sum()


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """-mean |f| of the teacher's features (DAFL: the input of the teacher's classifier layer): large activations
    where the teacher sees the features of real images."""
    if not isinstance(features, torch.Tensor) or features.numel() == 0:
        raise ValueError("activation_loss needs a non-empty tensor of features")
    return -_logits(features).abs().mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
            backend: str = "auto") -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), mean over samples (Hinton et al. 2015, as the data-free frameworks
    train their students: batchmean, with the T^2 that keeps the gradient's scale across temperatures)."""
    _checks.check_logits(student_logits, teacher_logits)
    check_positive(temperature, "temperature")
    backend = _library.resolve_backend(backend, student_logits.device)
    return temperature ** 2 * checked_kl_divergence(student_logits, teacher_logits, temperature, "batchmean",
                                                    backend)

