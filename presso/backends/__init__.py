"""Backends: lower a model for a `Target` and return a runnable `Artifact`.

Backends register themselves with :func:`register_backend`; :func:`compile` and
:func:`load_artifact` dispatch on the backend name (stored in the artifact's manifest).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from ..ir import Model
from ..ir.errors import BackendError
from .artifact import Artifact, read_manifest
from .target import Target, available_targets, get_target, register_target


class Backend(Protocol):
    name: str

    def compile(self, model: Model, target: Target, **options: Any) -> Artifact: ...

    def load(self, folder: Path, manifest: dict[str, Any]) -> Artifact: ...


_BACKENDS: dict[str, str] = {
    # name -> module that defines `BACKEND`; imported lazily (tvm is an optional extra)
    "onnxruntime": "presso.backends.onnxruntime",
    "tvm": "presso.backends.tvm",
}


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend '{name}'", hint="valid backends: " + ", ".join(_BACKENDS))
    try:
        module = importlib.import_module(_BACKENDS[name])
    except ModuleNotFoundError as exc:
        raise BackendError(f"backend '{name}' is not available: {exc}",
                           hint=f"install the extra: pip install 'presso[{name}]'") from exc
    return module.BACKEND


def compile(model: Model, target: str | Target = "cpu-x86", backend: str = "onnxruntime",
            **options: Any) -> Artifact:
    """Lower ``model`` for ``target`` with ``backend`` and return the artifact."""
    target = get_target(target)
    if backend not in target.backends:
        raise BackendError(f"target '{target.name}' is not served by backend '{backend}'",
                           hint=f"use one of {', '.join(target.backends)}")
    return get_backend(backend).compile(model, target, **options)


def load_artifact(folder: str | Path) -> Artifact:
    """Load a compiled artifact folder written by ``Artifact.save`` / ``presso compile``."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    return get_backend(manifest.get("backend", "")).load(folder, manifest)


__all__ = ["Artifact", "Backend", "Target", "available_targets", "compile", "get_backend", "get_target",
           "load_artifact", "register_target"]
