"""Quantization passes: schemes, Q/DQ insertion, calibration, folding, dynamic and weight-only.

The flow (DESIGN.md): ``insert-qdq`` → ``calibrate`` → optional fine-tuning → ``fold-qdq``;
``quantize-dynamic`` and ``quantize-weights`` are one-step alternatives.
"""

from . import bias_correction, calibrate, fold_qdq, insert_qdq, quantize_dynamic, quantize_weights, saturate  # noqa: F401  (importing registers the passes)
from . import adaround, equalize, smooth_quant  # noqa: F401,I001
from . import mixed_precision  # noqa: F401,I001
from .scheme import NAMED_SCHEMES, QuantScheme, TensorScheme, named_scheme

__all__ = ["NAMED_SCHEMES", "QuantScheme", "TensorScheme", "named_scheme"]
