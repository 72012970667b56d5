"""The loss ops' arguments: their defaults and their checks. Public functions run these once, before any kernel."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..common import check_choice, check_positive

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
REDUCTIONS = ("mean", "batchmean", "sum", "none")
# The authors' attention-transfer weight and KL temperature: beta = 250 goes with the KL's "mean" reduction.
DEFAULT_BETA = 250.0
DEFAULT_TEMPERATURE = 1.0


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16, float16 or float64; got {x.dtype}")


def check_logits(student_logits, teacher_logits) -> None:
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        _check_tensor(x, name)
        if x.dim() != 2:
            raise ValueError(f"{name} must be [B, C] logits, got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits and teacher_logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    if student_logits.device != teacher_logits.device:
        raise ValueError(f"student_logits and teacher_logits are on different devices: {student_logits.device} vs "
                         f"{teacher_logits.device}")


def check_kl_options(temperature, reduction) -> None:
    check_positive(temperature, "temperature")
    check_choice(reduction, REDUCTIONS, "reduction")


def check_feature_pairs(student_features, teacher_features, *, allow_empty: bool = False) -> None:
    for name, seq in (("student_features", student_features), ("teacher_features", teacher_features)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a list or tuple of [B, C, H, W] tensors, got {type(seq).__name__}")
    if len(student_features) != len(teacher_features):
        raise ValueError(f"student_features has {len(student_features)} feature maps and teacher_features has "
                         f"{len(teacher_features)}: they are matched layer by layer and must be as many")
    if not student_features and not allow_empty:
        raise ValueError("student_features and teacher_features are empty: give at least one pair of feature maps")
    device = None
    for layer, (s, t) in enumerate(zip(student_features, teacher_features)):
        for name, x in (("student_features", s), ("teacher_features", t)):
            _check_tensor(x, f"{name}[{layer}]")
            if x.dim() != 4:
                raise ValueError(f"{name}[{layer}] must be [B, C, H, W], got shape {tuple(x.shape)} (rank {x.dim()})")
            if x.numel() == 0:
                raise ValueError(f"{name}[{layer}] is empty: shape {tuple(x.shape)}")
            if device is None:
                device = x.device
            elif x.device != device:
                raise ValueError(f"{name}[{layer}] is on {x.device} while the other feature maps are on {device}")
        if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(f"layer {layer}: student_features {tuple(s.shape)} and teacher_features {tuple(t.shape)} "
                             "must agree in batch size and in H, W (channel counts may differ)")


def check_same_device(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{what}: tensors are on different devices ({a.device} vs {b.device})")


def common_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernels take one dtype for both sides; mixed inputs are promoted explicitly (bfloat16 with float16 ->
    float32)."""
    if a.dtype == b.dtype:
        return a, b
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def check_bn_prior_arguments(inputs, running_means, running_vars) -> None:
    """Inputs of BatchNorm layers ([B, C, H, W] each, one device) and, unless None, one [C] running mean and variance
    per input."""
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, Sequence):
        raise TypeError(f"inputs must be a list or tuple of [B, C, H, W] tensors, got {type(inputs).__name__}")
    if not inputs:
        raise ValueError("inputs is empty: give the input of at least one BatchNorm layer")
    for name, seq in (("running_means", running_means), ("running_vars", running_vars)):
        if seq is None:
            continue
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a list or tuple of [C] tensors, got {type(seq).__name__}")
        if len(seq) != len(inputs):
            raise ValueError(f"{name} has {len(seq)} tensors and inputs has {len(inputs)}: one per layer")
    device = inputs[0].device if isinstance(inputs[0], torch.Tensor) else None
    for layer, x in enumerate(inputs):
        _check_tensor(x, f"inputs[{layer}]")
        if x.dim() != 4:
            raise ValueError(f"inputs[{layer}] must be [B, C, H, W], got shape {tuple(x.shape)} (rank {x.dim()})")
        if x.numel() == 0:
            raise ValueError(f"inputs[{layer}] is empty: shape {tuple(x.shape)}")
        if x.device != device:
            raise ValueError(f"inputs[{layer}] is on {x.device} and inputs[0] on {device}: put them on one device")
        if running_means is None:
            continue
        for name, stat in (("running_means", running_means[layer]), ("running_vars", running_vars[layer])):
            _check_tensor(stat, f"{name}[{layer}]")
            if stat.shape != (x.shape[1],):
                raise ValueError(f"{name}[{layer}] must be [{x.shape[1]}] for inputs[{layer}] of shape "
                                 f"{tuple(x.shape)}, got shape {tuple(stat.shape)}")
            if stat.device != device:
                raise ValueError(f"{name}[{layer}] is on {stat.device} and inputs[{layer}] on {device}")
