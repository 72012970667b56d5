"""zskt_fast: zero-shot knowledge transfer (Micaelli & Storkey, NeurIPS 2019) with fused loss kernels.

Importing the package loads the compiled kernels when they are built; it does not import Triton or compile anything.
"""
from . import nn
from .ops import (
    BACKENDS,
    REDUCTIONS,
    attention_transfer,
    available_backends,
    bn_statistics,
    bn_statistics_prior,
    kd_at_loss,
    key_compile_caches_by_build,
    kl_divergence,
    zskt_generator_loss,
    zskt_student_loss,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "REDUCTIONS", "attention_transfer", "bn_statistics", "bn_statistics_prior", "kd_at_loss",
    "available_backends", "build_classifier", "distill",
    "DistillResult", "Generator", "key_compile_caches_by_build",
    "kl_divergence", "mean_transition_error", "nn", "transition_curves", "zero_shot_knowledge_transfer",
    "zskt_generator_loss", "zskt_student_loss",
]

# The model, training and MTE entry points load on first use, keeping `import zskt_fast` light.
_LAZY = {
    "build_classifier": "zskt_fast.models", "Generator": "zskt_fast.models",
    "transition_curves": "zskt_fast.engine.experiments.transition_curves",
    "mean_transition_error": "zskt_fast.engine.experiments.transition_curves",
    "zero_shot_knowledge_transfer": "zskt_fast.engine.loops.loop",
    "distill": "zskt_fast.engine.distill", "DistillResult": "zskt_fast.engine.distill",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zskt_fast' has no attribute {name!r}")
