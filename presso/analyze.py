"""Analyses that measure a model on data: ``presso.analyze.sensitivity(model, data, metric=...)``.

Per-layer int8 sensitivity (task-metric drop and output SQNR with only one layer quantized,
and with only one layer left float; weight and activation ranges and outliers), cached on
disk. The work is done in ``presso.passes.quant.sensitivity``; this module is the public name.
"""

from __future__ import annotations

from .passes.quant.metrics import METRICS, Metric, get_metric
from .passes.quant.sensitivity import LayerSensitivity, SensitivityReport, sensitivity

__all__ = ["METRICS", "LayerSensitivity", "Metric", "SensitivityReport", "get_metric", "sensitivity"]
