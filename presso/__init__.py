"""Presso: a compiler that makes neural networks smaller and faster, and shows its work.

The four verbs: transform (``PassManager``), compile (``compile``), inspect (``inspect``) and
measure (``bench``). Import what you need from here.
"""

from .ir import (
    BackendError,
    CalibrationError,
    InvalidModelError,
    Model,
    ModelLoadError,
    PassError,
    PipelineError,
    PressoError,
    UnsupportedOpError,
    evaluate,
    load,
    save,
)
from .ir.analysis.summary import summarize as inspect
from .passes import Pass, PassContext, PassManager, PassResult, register_pass
from .api import quantize
from . import analyze  # noqa: E402  (presso.analyze.sensitivity)
from .backends import compile, load_artifact  # noqa: E402  (after passes: targets use schemes)
from .backends.benchmark import bench
from .report import report  # the function; its package is presso/report/
from .search import search  # the function; its package is presso/search/ (Ray and Optuna load when it runs)

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CalibrationError", "InvalidModelError", "Model", "ModelLoadError", "Pass", "PassContext", "PassError",
    "PassManager", "PassResult", "PipelineError", "PressoError", "UnsupportedOpError", "__version__",
    "evaluate", "inspect", "load", "register_pass", "save",
]
__all__ += ["bench", "compile", "load_artifact"]
__all__ += ["quantize"]
__all__ += ["report"]
__all__ += ["search"]
