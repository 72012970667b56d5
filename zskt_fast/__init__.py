"""zskt_fast: zero-shot knowledge transfer (Micaelli & Storkey, NeurIPS 2019) with fused loss kernels.

Importing the package loads the compiled kernels when they are built; it does not import Triton or compile anything.
"""
from . import nn
from .ops import (
    BACKENDS,
    REDUCTIONS,
    attention_transfer,
    available_backends,
    kl_divergence,
    zskt_generator_loss,
    zskt_student_loss,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "REDUCTIONS", "attention_transfer", "available_backends", "kl_divergence", "nn",
    "zskt_generator_loss", "zskt_student_loss",
]
