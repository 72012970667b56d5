"""The loss terms of the data-free distillation methods beside ZSKT, on logits, features and images (t: the
teacher's logits, s: the student's, on the same generated batch). Each is one function with its formula and its
paper; docs/methods.md lists them together. The batch-norm statistics prior, a pass over feature maps, is a fused op
of its own (ops/bn_statistics_prior.py); the adversarial KL is `zskt_generator_loss` (its reduction 'mean' for ZSKT,
'batchmean' for DFQ as the frameworks run it); the KD term uses the fused KL op. The pool methods add the
decision-adversarial KL (FastDFKD), the competition term, the cross-entropy against random targets and the image priors
(DeepInversion).
"""
from __future__ import annotations

import math

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



def decision_adversarial_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """-mean over samples of KL(softmax(t_i) || softmax(s_i)) * [argmax s_i == argmax t_i]: the generator's
    adversarial term of CMI and FastDFKD (Fang et al. 2021, 2022), which seeks disagreement only on the samples where
    student and teacher still agree (the mean runs over every sample, masked ones counting 0)."""
    _checks.check_logits(student_logits, teacher_logits)
    s, t = _logits(student_logits), _logits(teacher_logits)
    per_sample = (F.softmax(t, dim=1) * (F.log_softmax(t, dim=1) - F.log_softmax(s, dim=1))).sum(dim=1)
    agree = (s.argmax(dim=1) == t.argmax(dim=1)).to(per_sample.dtype)
    return -(per_sample * agree).mean()


def cross_entropy_to(teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the teacher's logits against given class targets, mean over samples: the one-hot term with
    targets drawn at random (DeepInversion, FastDFKD), which asks for images of every class."""
    _checks.check_logits(teacher_logits, teacher_logits)
    if targets.dim() != 1 or targets.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"targets must be [B] with B = {teacher_logits.shape[0]}, got {tuple(targets.shape)}")
    return F.cross_entropy(_logits(teacher_logits), targets)


COMPETITION_TEMPERATURE = 3.0  # DeepInversion's adaptive competition compares softmaxes at T = 3


def competition_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                     temperature: float = COMPETITION_TEMPERATURE) -> torch.Tensor:
    """-JS(softmax(t / T), softmax(s / T)), the Jensen-Shannon divergence 0.5 KL(P || M) + 0.5 KL(Q || M) with
    M = (P + Q) / 2, mean over samples: DeepInversion's adaptive competition term (Yin et al. 2020), which seeks
    images the student does not yet classify as the teacher does."""
    _checks.check_logits(student_logits, teacher_logits)
    check_positive(temperature, "temperature")
    log_p = F.log_softmax(_logits(teacher_logits) / temperature, dim=1)
    log_q = F.log_softmax(_logits(student_logits) / temperature, dim=1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * (log_p.exp() * (log_p - log_m)).sum(dim=1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(dim=1)
    return -js.mean()


def _image_differences(images: torch.Tensor) -> list[torch.Tensor]:
    return [images[:, :, :, :-1] - images[:, :, :, 1:], images[:, :, :-1, :] - images[:, :, 1:, :],
            images[:, :, 1:, :-1] - images[:, :, :-1, 1:], images[:, :, :-1, :-1] - images[:, :, 1:, 1:]]


def total_variation_squares(images: torch.Tensor) -> torch.Tensor:
    """The sums of squares of the four neighbour differences of total_variation, [4] (what ranks add up)."""
    _check_images(images)
    return torch.stack([d.pow(2).sum() for d in _image_differences(_logits(images))])


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """sum over the four neighbour directions (right, down, and both diagonals) of the L2 norm of the differences
    between neighbouring pixels of the whole batch: DeepInversion's total-variation image prior (the norms are not
    squared and run over the batch, as its code computes them)."""
    return total_variation_squares(images).sqrt().sum()


def image_square_sum(images: torch.Tensor) -> torch.Tensor:
    """The sum of squares of image_l2 (what ranks add up), in float32 or float64 as the images are."""
    _check_images(images)
    return _logits(images).pow(2).sum()


def image_l2(images: torch.Tensor) -> torch.Tensor:
    """The L2 norm of the whole batch of images: DeepInversion's L2 image prior."""
    return image_square_sum(images).sqrt()


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.numel() == 0:
        raise ValueError(f"images must be a non-empty [B, C, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.shape[-1] < 2 or images.shape[-2] < 2:
        raise ValueError(f"the image priors need images of at least 2x2 pixels, got {tuple(images.shape)}")


def instance_means(feature_map: torch.Tensor) -> torch.Tensor:
    """The mean of each sample's channels over the spatial positions, [B, C] from [B, C, H, W] (float32 or float64):
    CMI's per-sample description of an image at a teacher layer (the input of each BatchNorm2d)."""
    if not isinstance(feature_map, torch.Tensor) or feature_map.dim() != 4 or feature_map.numel() == 0:
        raise ValueError(f"instance_means needs a non-empty [B, C, H, W] feature map, got "
                         f"{tuple(feature_map.shape) if isinstance(feature_map, torch.Tensor) else feature_map}")
    return _logits(feature_map).mean(dim=(2, 3))


def contrastive_loss(local_embeddings: torch.Tensor, global_embeddings: torch.Tensor, current: int, *,
                     temperature: float) -> torch.Tensor:
    """InfoNCE of each row's local view against every row's global view (Fang et al. 2021, CMI): with l_i, g_j the
    [N, D] embeddings, logits_ij = l_i . g_j / T with g held constant (no gradient through the global views), and
    loss_i = -log softmax_j(logits_ij) at j = i. The first `current` rows are this batch, the rest earlier images
    from a memory bank: the loss is mean(loss_i, i < current) + mean(loss_i, i >= current), or the first mean alone
    when there are no bank rows (the bank's images would otherwise dilute the batch's gradient)."""
    if local_embeddings.dim() != 2 or local_embeddings.shape != global_embeddings.shape:
        raise ValueError(f"contrastive_loss needs two [N, D] embeddings of one shape, got "
                         f"{tuple(local_embeddings.shape)} and {tuple(global_embeddings.shape)}")
    rows = local_embeddings.shape[0]
    if not 1 <= current <= rows:
        raise ValueError(f"current must count the batch's rows, 1 to {rows}, got {current}")
    check_positive(temperature, "temperature")
    logits = _logits(local_embeddings) @ _logits(global_embeddings).detach().T / temperature
    per_row = F.cross_entropy(logits, torch.arange(rows, device=logits.device), reduction="none")
    loss = per_row[:current].mean()
    return loss + per_row[current:].mean() if rows > current else loss
