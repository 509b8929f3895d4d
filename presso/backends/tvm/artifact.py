"""`TVMArtifact`: a compiled TVM library in a folder, runnable like any Presso artifact.

Folder layout::

    manifest.json     backend "tvm", target, TVM target, inputs/outputs (name, shape, dtype),
                      tuning summary
    model.so          the Relax VM executable with its kernels and the weights (constants)
    tuning/           MetaSchedule database (when tuned); the next compile into the folder reuses it

Running: on this machine for native CPU targets and CUDA; under qemu-aarch64 for
``cpu-arm64`` on a non-ARM host (see :mod:`.qemu`).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...ir.errors import BackendError
from ..artifact import Artifact, write_manifest

LIBRARY = "model.so"
TUNING_DIR = "tuning"


class TVMArtifact(Artifact):
    backend = "tvm"

    def __init__(self, manifest: dict[str, Any], folder: Path, *, executable: Any = None):
        super().__init__(manifest, folder)
        self._executable = executable  # set right after compile; else loaded from the folder
        self._vm = None

    # ---- running -------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [spec["name"] for spec in self.manifest["outputs"]]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._check_feeds(feeds)
        if self.manifest.get("runs_on") == "qemu-aarch64":
            from . import qemu

            outputs = qemu.run(self.library, dict(zip(self.input_names, arrays)), self.input_names)
        else:
            outputs = self._run_native(arrays)
        if len(outputs) != len(self.output_names):
            raise BackendError(f"the library returned {len(outputs)} outputs, the manifest lists "
                               f"{len(self.output_names)}", where=str(self.library))
        return dict(zip(self.output_names, outputs))

    def _run_native(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import tvm

        vm, device = self._virtual_machine()
        result = vm["main"](*[tvm.runtime.tensor(a, device) for a in arrays])
        items = [result] if hasattr(result, "numpy") else list(result)
        return [item.numpy() for item in items]

    def _virtual_machine(self):
        import tvm
        from tvm import relax

        if self._vm is None:
            device = tvm.cuda(0) if self.manifest["device"] == "cuda" else tvm.cpu(0)
            if not device.exist:
                raise BackendError(f"this artifact needs a {self.manifest['device']} device and none is present",
                                   where=str(self.folder))
            executable = self._executable
            if executable is None:
                if not self.library.is_file():
                    raise BackendError(f"the artifact's library {LIBRARY} is missing", where=str(self.folder))
                executable = tvm.runtime.load_module(str(self.library))
            self._vm = (relax.VirtualMachine(executable, device), device)
        return self._vm

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        extra = sorted(set(feeds) - set(self.input_names))
        if missing or extra:
            raise BackendError(f"feeds do not match the artifact's inputs: missing {missing}, unexpected {extra}",
                               hint=f"the inputs are {self.input_names}")
        arrays = []
        for spec in self.manifest["inputs"]:
            array = np.asarray(feeds[spec["name"]])
            if array.dtype != np.dtype(spec["dtype"]):
                raise BackendError(f"input '{spec['name']}' has dtype {array.dtype}, the artifact takes {spec['dtype']}",
                                   where=f"input '{spec['name']}'")
            want = spec["shape"]
            if len(want) != array.ndim or any(isinstance(w, int) and w != d for w, d in zip(want, array.shape)):
                raise BackendError(f"input '{spec['name']}' has shape {list(array.shape)}, the artifact was "
                                   f"compiled for {want}", where=f"input '{spec['name']}'",
                                   hint="recompile with --shape for the new size")
            arrays.append(np.ascontiguousarray(array))
        return arrays

    # ---- files ---------------------------------------------------------------------------
    @property
    def library(self) -> Path:
        return Path(self.folder) / LIBRARY

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if folder.resolve() != Path(self.folder).resolve():
            shutil.copy2(self.library, folder / LIBRARY)
            tuning = Path(self.folder) / TUNING_DIR
            if tuning.is_dir():
                shutil.copytree(tuning, folder / TUNING_DIR, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("logs"))
        write_manifest(folder, self.manifest)
        return folder
