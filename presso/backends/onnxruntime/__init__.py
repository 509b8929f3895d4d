"""The onnxruntime backend: legalize a model for a target, verify that onnxruntime loads it,
pick the fastest int8 form for quantized models, and write a runnable artifact folder.

``BACKEND`` is what :func:`presso.backends.get_backend` returns for ``"onnxruntime"``.
"""

from .artifact import OrtArtifact
from .backend import BACKEND, OnnxRuntimeBackend

__all__ = ["BACKEND", "OnnxRuntimeBackend", "OrtArtifact"]
