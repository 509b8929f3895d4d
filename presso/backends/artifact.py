"""`Artifact`: a compiled model folder with a manifest, loadable and runnable again."""

from __future__ import annotations

import json
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.errors import BackendError

MANIFEST = "manifest.json"


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    min_ms: float = float("nan")  # on a shared machine, the run least disturbed by other work


class Artifact(ABC):
    """A model compiled for a target by a backend.

    ``run(feeds)`` executes it, ``save(folder)`` writes the folder with ``manifest.json``
    and ``benchmark(feeds)`` measures latency. ``presso.load_artifact(folder)`` returns the
    same kind of object from a saved folder.
    """

    backend: str = ""

    def __init__(self, manifest: dict[str, Any], folder: Path | None = None):
        self.manifest = manifest
        self.folder = folder

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def save(self, folder: str | Path) -> Path: ...

    def benchmark(self, feeds: Mapping[str, np.ndarray], *, warmup: int = 3, runs: int = 20) -> LatencyStats:
        for _ in range(warmup):
            self.run(feeds)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.run(feeds)
            times.append((time.perf_counter() - start) * 1000)
        arr = np.array(times)
        return LatencyStats(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.mean()), runs,
                            float(arr.min()))


def base_manifest(backend: str, target: str, **extra: Any) -> dict[str, Any]:
    import onnx
    import onnxruntime

    from .. import __version__

    return {
        "format": 1,
        "backend": backend,
        "target": target,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"presso": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        **extra,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    tmp.replace(folder / MANIFEST)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BackendError("not an artifact folder: manifest.json is missing", where=str(folder),
                           hint="create one with `presso compile`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BackendError(f"manifest.json is not valid JSON: {exc}", where=str(path)) from exc
