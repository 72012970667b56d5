"""Public loss ops. Importing this loads the compiled library (a shared object, nothing is compiled) but not Triton."""
from ._checks import DEFAULT_BETA, DEFAULT_TEMPERATURE, REDUCTIONS
from ._library import (BACKENDS, available_backends, compiled_available, compiled_with_cuda,
                       key_compile_caches_by_build, resolve_backend)
from .attention_transfer import attention_transfer
from .bn_statistics_prior import bn_statistics, bn_statistics_prior
from .kl_divergence import kl_divergence
from .zskt_losses import KD_ALPHA, KD_BETA, KD_TEMPERATURE, kd_at_loss, zskt_generator_loss, zskt_student_loss

__all__ = [
    "BACKENDS", "DEFAULT_BETA", "DEFAULT_TEMPERATURE", "KD_ALPHA", "KD_BETA", "KD_TEMPERATURE", "REDUCTIONS",
    "attention_transfer", "available_backends", "bn_statistics", "bn_statistics_prior", "kd_at_loss",
    "compiled_available", "compiled_with_cuda",
    "key_compile_caches_by_build", "kl_divergence", "resolve_backend", "zskt_generator_loss", "zskt_student_loss",
]
