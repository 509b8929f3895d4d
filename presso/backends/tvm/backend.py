"""`TVMBackend.compile`: lower, (tune), build and export a model into an artifact folder.

Options (keyword arguments of ``presso.backends.compile(..., backend="tvm", ...)``):

- ``shapes``: ``{input: [d0, d1, ...]}`` fixes dynamic input dimensions (``--shape``).
  Without it a dynamic input compiles with symbolic dimensions when TVM can, else a
  ``BackendError`` names the input.
- ``tune_trials``: MetaSchedule trials to measure (``--tune trials=N``); 0 = no tuning.
- ``output``: the artifact folder to build into. Its ``tuning/`` database from an earlier
  compile is reused: kernels already tuned are applied without measuring them again.
- ``progress``: show the tuning progress bar (default True).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...ir import Model
from ...ir.errors import BackendError
from ..artifact import base_manifest, write_manifest
from ..target import Target
from . import build as tvm_build
from . import lower
from .artifact import LIBRARY, TUNING_DIR, TVMArtifact


class TVMBackend:
    name = "tvm"

    def compile(self, model: Model, target: Target, *, shapes: Mapping[str, Sequence[int]] | None = None,
                tune_trials: int = 0, output: str | Path | None = None, progress: bool = True,
                **options: Any) -> TVMArtifact:
        if options:
            raise BackendError(f"unknown option(s) for the tvm backend: {sorted(options)}",
                               hint="valid options: shapes, tune_trials, output, progress")
        folder = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="presso-tvm-"))
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        prepared = lower.prepare(model, target, shapes)
        mod = lower.to_relax(prepared)
        tvm_target = tvm_build.tvm_target(target)
        database = folder / TUNING_DIR
        tuning = None
        if tune_trials:
            if not tvm_build.is_native(target):
                raise BackendError(f"cannot tune for '{target.name}' here: tuning measures kernels on the "
                                   "target itself", hint="compile without --tune (untuned schedules are used)")
            from .tune import tune

            with tvm_target:
                import tvm

                with tvm.transform.PassContext(opt_level=3):
                    fused = tvm_build.fuse(mod, tvm_target)
            tuning = tune(fused, tvm_target, database, tune_trials, progress=progress).as_dict()
        executable = tvm_build.build(mod, tvm_target, database=database if database.is_dir() else None)
        tvm_build.export(executable, folder / LIBRARY, target)
        manifest = base_manifest(
            "tvm", target.name,
            device=target.device,
            tvm_target=str(tvm_target),
            library=LIBRARY,
            parameters=f"embedded in {LIBRARY} (constants of the Relax VM executable)",
            inputs=_specs(prepared.inputs),
            outputs=_specs(prepared.outputs),
            runs_on=_runs_on(target),
            tuning=tuning or ({"database": TUNING_DIR, "reused": True} if database.is_dir() else None),
            compile_seconds=round(time.perf_counter() - start, 1),
        )
        manifest["versions"]["tvm"] = _tvm_version()
        write_manifest(folder, manifest)
        native = _runs_on(target) == "native"
        return TVMArtifact(manifest, folder, executable=executable if native else None)

    def load(self, folder: Path, manifest: dict[str, Any]) -> TVMArtifact:
        for key in ("inputs", "outputs", "device"):
            if key not in manifest:
                raise BackendError(f"the TVM artifact's manifest has no '{key}'", where=str(folder),
                                   hint="recompile it with `presso compile --backend tvm`")
        return TVMArtifact(manifest, Path(folder))


def _runs_on(target: Target) -> str:
    if target.device == "cuda":
        return "cuda"
    return "native" if tvm_build.is_native(target) else f"qemu-{target.isa}"


def _specs(tensors) -> list[dict[str, Any]]:
    import numpy as np

    return [{"name": t.name, "dtype": np.dtype(t.dtype).name,
             "shape": [d if isinstance(d, int) else str(d) for d in (t.shape or [])]} for t in tensors]


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


BACKEND = TVMBackend()
