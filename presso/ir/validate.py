"""The last check before a model leaves Presso: ``onnx.checker`` with full checking, then a load
in the engine that will run it.

Every writer (``save``, ``presso opt -o``, ``presso compile``, the IR dumps of the pass
manager) calls :func:`validate_written_model` on the file it has just written to a temporary
path, and renames it into place only when the check passes: a model that its engine would
refuse never reaches the user's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from .errors import InvalidModelError

ENGINES = ("onnxruntime", None)


def validate_written_model(path: str | os.PathLike, *, engine: str | None = "onnxruntime",
                           history: list[str] | None = None, destination: str | None = None) -> None:
    """Raise :class:`InvalidModelError` unless the model file at ``path`` is one to hand out.

    ``path`` is the file as written (external data beside it). ``engine=None`` skips the load
    (for models meant for an engine that is not installed here; the checker still runs).
    ``history`` (the passes the model went through) and ``destination`` (the path the user
    asked for) make the message say where the problem comes from and what was not written.
    """
    path = Path(path)
    shown = destination or str(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidModelError(
            f"refusing to write a model that fails onnx.checker: {_first_line(exc)}",
            where=shown, hint=_hint(history)) from exc
    if engine == "onnxruntime":
        _load_in_onnxruntime(path, shown, history)
    elif engine is not None:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def _load_in_onnxruntime(path: Path, shown: str, history: list[str] | None) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Loading resolves the graph, types and kernels; optimizing it would only cost time here.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Pre-packing copies every MatMul weight; without it onnxruntime maps page-aligned external
    # data and a multi-GB model is checked without reading its weights into memory.
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, …)
        raise InvalidModelError(
            f"refusing to write a model that onnxruntime cannot load: {_first_line(exc)}",
            where=shown, hint=_hint(history)) from exc


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:399] + "…"


def _hint(history: list[str] | None) -> str:
    if history:
        return (f"nothing was written. The model went through {', '.join(history)}; rerun the pipeline "
                "with --verify to find the pass that breaks it, and report it with the model")
    return "nothing was written; the model was already invalid when it was loaded or built"
