"""Passes: the pass framework, the registry, pipelines, the manager, and the pass families."""

from .base import ErrorMetrics, OptionSpec, Pass, PassContext, PassResult
from .manager import PassManager, PassRecord, PipelineReport
from .pipeline import load_recipe, parse_pipeline
from .registry import available_passes, get_pass, register_pass

__all__ = [
    "ErrorMetrics", "OptionSpec", "Pass", "PassContext", "PassManager", "PassRecord", "PassResult",
    "PipelineReport", "available_passes", "get_pass", "load_recipe", "parse_pipeline", "register_pass",
]
