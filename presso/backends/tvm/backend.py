"""`TVMBackend.compile`: lower, (tune), build and export a model into an artifact folder.

Options (keyword arguments of ``presso.backends.compile(..., backend="tvm", ...)``):

- ``shapes``: ``{input: [d0, d1, ...]}`` fixes dynamic input dimensions (``--shape``).
  Without it a dynamic input compiles with symbolic dimensions when TVM can, else a
  ``BackendError`` names the input.
- ``tune_trials``: MetaSchedule trials to measure (``--tune trials=N``); 0 = no tuning.
- ``output``: the artifact folder to build into. Its ``tuning/`` database from an earlier
  compile is reused: kernels already tuned are applied without measuring them again.
- ``progress``: show the tuning progress bar (default True).
- ``int8``: how quantized (QDQ) Conv/MatMul run (``--int8``): "arith" with int8/uint8
  operands and int32 accumulation (:mod:`.int8`), "float" on dequantized float values as
  TVM's ONNX frontend imports them. Default: the faster one on the target
  (:data:`.int8.DEFAULT_MODE`: arith on cpu-x86, float where not measured). A float model is
  unaffected.

The manifest's ``outputs`` are the shapes and dtypes of the compiled Relax function's
results (what the library returns), not the ONNX file's declared output shapes, which can
be stale or symbolic after ``--shape``.
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
from .int8 import MODES as INT8_MODES
from .int8 import Int8Report
from .int8 import default_mode as default_int8_mode


class TVMBackend:
    name = "tvm"

    def compile(self, model: Model, target: Target, *, shapes: Mapping[str, Sequence[int]] | None = None,
                tune_trials: int = 0, output: str | Path | None = None, progress: bool = True,
                int8: str | None = None, **options: Any) -> TVMArtifact:
        if target.device == "mcu":  # Cortex-M: C kernels behind Presso's own glue (backends/mcu)
            from ..mcu.backend import BACKEND as MCU_BACKEND

            return MCU_BACKEND.compile(model, target, shapes=shapes, tune_trials=tune_trials, output=output,
                                       progress=progress, int8=int8, **options)
        if options:
            raise BackendError(f"unknown option(s) for the tvm backend: {sorted(options)}",
                               hint="valid options: shapes, tune_trials, output, progress, int8")
        int8 = int8 or default_int8_mode(target.name)
        if int8 not in INT8_MODES:
            raise BackendError(f"unknown int8 mode '{int8}' for the tvm backend",
                               hint=f"valid modes: {', '.join(INT8_MODES)}")
        folder = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="presso-tvm-"))
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        prepared = lower.prepare(model, target, shapes, int8=int8)
        int8_report = Int8Report()
        avx2 = target.isa == "x86_64" and "avx2" in target.features
        mod = lower.to_relax(prepared, int8=int8, int8_report=int8_report, avx2=avx2)
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
            outputs=_output_specs(mod, prepared.outputs),
            runs_on=_runs_on(target),
            tuning=tuning or ({"database": TUNING_DIR, "reused": True} if database.is_dir() else None),
            int8={"mode": int8, **int8_report.as_dict()} if _is_quantized(prepared) else None,
            compile_seconds=round(time.perf_counter() - start, 1),
        )
        manifest["versions"]["tvm"] = _tvm_version()
        write_manifest(folder, manifest)
        native = _runs_on(target) == "native"
        return TVMArtifact(manifest, folder, executable=executable if native else None)

    def load(self, folder: Path, manifest: dict[str, Any]) -> TVMArtifact:
        if manifest.get("device") == "mcu":
            from ..mcu.backend import BACKEND as MCU_BACKEND

            return MCU_BACKEND.load(folder, manifest)
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


def _output_specs(mod, tensors) -> list[dict[str, Any]]:
    """Name, dtype and shape of each result of the Relax ``main``: what the library returns.

    The ONNX outputs give the names (same order); their declared shapes can be stale (a
    Reshape whose target was folded, a symbolic dimension that ``--shape`` fixed upstream).
    A dimension TVM keeps symbolic is written as its name.
    """
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    declared = _specs(tensors)
    if len(fields) != len(declared):
        raise BackendError(f"the compiled model returns {len(fields)} outputs, the ONNX model declares "
                           f"{len(declared)}", hint="report the model")
    specs = []
    for spec, field in zip(declared, fields):
        shape = getattr(field, "shape", None)
        if isinstance(shape, relax.ShapeExpr):
            spec = {**spec, "shape": [int(d) if hasattr(d, "value") else str(d) for d in shape.values]}
        if getattr(field, "dtype", None) is not None and str(field.dtype) not in ("", "void"):
            spec = {**spec, "dtype": str(field.dtype)}
        specs.append(spec)
    return specs


def _is_quantized(model: Model) -> bool:
    return any(node.op in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.nodes)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


BACKEND = TVMBackend()
