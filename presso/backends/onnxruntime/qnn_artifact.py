"""Compile a quantized model for the QNN HTP (``qnn-htp``) into an EPContext artifact.

The artifact's ``model.onnx`` is an **EPContext** model: one ``EPContext`` node holding the
QNN context binary that the HTP backend compiled (``ep.context_enable``), so a device loads it
without compiling again. Compiling refuses a model with nodes QNN rejects (they would run on
the CPU) unless ``allow_fallback`` is given; the manifest records the share of nodes on the NPU.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ...ir import DataSource, Model, random_feeds
from ...ir.io import atomic_write_bytes
from ...ir.validate import validate_written_model
from ...ir.analysis.shapes import dynamic_inputs, fix_input_shapes
from ...ir.errors import BackendError, CalibrationError, PressoError
from ..artifact import Artifact, base_manifest, write_manifest
from ..target import Target
from .artifact import MODEL_FILE, require_model_file
from .int8_form import is_quantized
from .qnn import QnnSupport, captured_output, open_qnn_session, qnn_device, qnn_support, session_options



def compile_qnn(model: Model, target: Target, *, shapes: Mapping[str, Sequence[int]] | None = None,
                data: Any = None, allow_fallback: bool = False, verify: bool = True, **_cpu_options: Any) -> QnnArtifact:
    """Lower a quantized ``model`` (not modified) to an EPContext model for the HTP.

    Dynamic inputs are fixed from ``shapes`` or, failing that, from ``data``'s first sample.
    Raises :class:`BackendError` naming every node QNN rejects, with QNN's reason, unless
    ``allow_fallback`` (those nodes then run on the CPU execution provider).
    """
    from ...passes import PassContext, PassManager

    qnn_device()  # the missing-package error comes before any work
    model = model.copy()
    if shapes:
        fix_input_shapes(model, shapes)
    if dynamic_inputs(model):
        if data is None:
            raise BackendError(f"the {target.name} target runs static shapes only, and inputs "
                               f"{sorted(dynamic_inputs(model))} are dynamic",
                               hint="give --shape NAME=D1,D2,… or --data with a sample")
        pipeline = "static-shapes," + target.legalize
    else:
        pipeline = target.legalize
    try:
        PassManager.parse(pipeline).run(model, ctx=PassContext(target=target, data=data, progress=False))
    except PressoError as exc:
        raise BackendError(f"legalization for target '{target.name}' failed: {exc}") from exc
    if not is_quantized(model):
        raise BackendError(f"the {target.name} target runs quantized models, and this one is float",
                           hint=f'quantize it first: presso.quantize(model, data, target="{target.name}") or '
                                f'presso opt MODEL --target {target.name} -p "insert-qdq,calibrate,fold-qdq" --data DATA')
    proto = model.to_proto()
    support = qnn_support(proto)
    check_support(support, allow_fallback=allow_fallback)

    with tempfile.TemporaryDirectory(prefix="presso-qnn-") as tmp:
        ctx_path = Path(tmp) / "model_ctx.onnx"
        start = time.perf_counter()
        import onnxruntime as ort

        try:
            with captured_output():
                ort.InferenceSession(proto.SerializeToString(),
                                     session_options(fallback=allow_fallback, context_path=str(ctx_path)))
        except Exception as exc:
            raise BackendError(f"QNN could not compile the model: {str(exc).strip().splitlines()[0]}",
                               hint="run `presso inspect MODEL --target qnn-htp` for QNN's per-node verdicts") from exc
        compile_s = time.perf_counter() - start
        if ctx_path.is_file():
            context = onnx.load(str(ctx_path))
        elif allow_fallback:
            context = proto  # QNN took no partition (e.g. only Q/DQ around rejected ops): all on the CPU
        else:
            raise BackendError("onnxruntime wrote no EPContext model", hint="check the onnxruntime-qnn version (2.7)")
    binary = sum(len(a.s) for n in context.graph.node if n.op_type == "EPContext"
                 for a in n.attribute if a.name == "ep_cache_context")
    from .backend import tensor_specs

    manifest = base_manifest(
        "onnxruntime", target.name, device=target.device, quantized=True,
        providers=list(target.ort_providers),
        legalize={"pipeline": pipeline},
        inputs=tensor_specs(model, model.graph.inputs),
        outputs=tensor_specs(model, model.graph.outputs),
        qnn={**support.as_dict(), "allow_fallback": allow_fallback, "compile_s": round(compile_s, 3),
             "context_binary_bytes": binary, "epcontext_nodes": sum(n.op_type == "EPContext" for n in context.graph.node),
             "onnxruntime_qnn": _qnn_version()},
        source=str(model.source_path) if model.source_path else None,
    )
    artifact = QnnArtifact(manifest, context=context)
    if verify:
        manifest["verification"] = _verify(model, artifact, data)
    return artifact


def check_support(support: QnnSupport, *, allow_fallback: bool) -> None:
    """Raise :class:`BackendError` for nodes QNN rejects (unless ``allow_fallback``) or a graph
    that QNN cannot finalize."""
    if support.unsupported and not allow_fallback:
        raise BackendError(
            f"{len(support.unsupported)} of {support.total} nodes would fall back to the CPU "
            f"({support.fraction:.1%} on the NPU): {support.describe()}",
            where="qnn-htp",
            hint="rewrite or keep out those ops (see `presso inspect MODEL --target qnn-htp`), "
                 "or pass --allow-fallback (allow_fallback=True) to run them on the CPU")
    if support.error and not support.unsupported:
        raise BackendError(f"QNN cannot prepare the graph: {support.error}", where="qnn-htp",
                           hint="quantize with the target's scheme (presso.quantize(..., target='qnn-htp')) "
                                "so that every op is a Q/DQ unit")


def _qnn_version() -> str | None:
    try:
        import onnxruntime_qnn

        return getattr(onnxruntime_qnn, "__version__", None)
    except ImportError:
        return None


def _verify(model: Model, artifact: QnnArtifact, data: Any) -> dict[str, Any]:
    """The HTP's outputs against the same quantized model on onnxruntime's CPU EP, one sample."""
    from ...ir import evaluate
    from ...passes.verify import compare_outputs

    try:
        feed = (next(iter(DataSource.open(data, model).feeds(batch=None, limit=1))) if data is not None
                else random_feeds(model, 1, seed=0)[0])
    except PressoError as exc:
        return {"skipped": str(exc)}
    reference = evaluate(model, feed)
    values = artifact.run(feed)
    metrics = compare_outputs([reference], [{k: values[k] for k in reference}])
    return {"samples": 1, "against": "the quantized model on the CPU EP", "real_data": data is not None,
            **{k: (v if np.isfinite(v) else str(v)) for k, v in metrics.as_dict().items()}}


class QnnArtifact(Artifact):
    """An EPContext model for the HTP: ``run(feeds)`` on the QNN EP with CPU fallback off (unless
    the artifact was compiled with ``allow_fallback``), ``save(folder)``."""

    backend = "onnxruntime"

    def __init__(self, manifest: dict[str, Any], *, context: onnx.ModelProto | None = None,
                 folder: Path | None = None):
        super().__init__(manifest, folder)
        self.context = context
        self._session = None

    @property
    def fallback(self) -> bool:
        return bool(self.manifest.get("qnn", {}).get("allow_fallback"))

    @property
    def session(self):
        if self._session is None:
            source = self.context if self.context is not None else self.folder / MODEL_FILE
            self._session = open_qnn_session(source, fallback=self.fallback,
                                             where=str(self.folder) if self.folder else None)
        return self._session

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = {s["name"]: s for s in self.manifest.get("inputs", [])}
        if set(feeds) != set(specs):
            raise CalibrationError(f"input names do not match the artifact: got {sorted(feeds)}",
                                   hint=f"the artifact's inputs are {sorted(specs)}")
        checked = {}
        for name, spec in specs.items():
            value = np.asarray(feeds[name])
            if spec.get("dtype") and value.dtype != np.dtype(spec["dtype"]):
                value = value.astype(spec["dtype"])
            if spec.get("shape") and list(value.shape) != list(spec["shape"]):
                raise CalibrationError(f"input '{name}' has shape {list(value.shape)}, the HTP artifact was compiled "
                                       f"for {spec['shape']}", where=f"input '{name}'",
                                       hint="feed one sample of the compiled shape (recompile with --shape for others)")
            checked[name] = value
        try:
            values = self.session.run(None, checked)
        except Exception as exc:
            raise BackendError(f"the QNN HTP failed to run the artifact: {str(exc).strip().splitlines()[0]}",
                               where=str(self.folder) if self.folder else None) from exc
        return dict(zip([o.name for o in self.session.get_outputs()], values))

    def save(self, folder: str | Path) -> Path:
        """Write ``model.onnx`` (the EPContext model) and the manifest; the written model must
        load on the HTP, else nothing stays behind."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        context = self.context if self.context is not None else onnx.load(str(self.folder / MODEL_FILE))

        def check(written: Path) -> None:
            # onnx.checker as for every model Presso writes (engine=None: an EPContext model
            # loads on the QNN EP only), then the proof that the HTP loads it, before the rename.
            validate_written_model(written, engine=None, destination=str(path))
            open_qnn_session(written, fallback=self.fallback, where=str(path))

        # graphsurgeon cannot hold the EPContext node's binary attribute, so the proto goes
        # through io's atomic writer directly, with the same checks as presso.ir.save.
        atomic_write_bytes(path, context.SerializeToString(), check)
        self.manifest["files"] = {"model": MODEL_FILE}
        self.manifest["sizes"] = {"model": path.stat().st_size}
        write_manifest(folder, self.manifest)
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: Path, manifest: dict[str, Any]) -> QnnArtifact:
        require_model_file(folder, manifest)
        return cls(manifest, folder=folder)


__all__ = ["QnnArtifact", "check_support", "compile_qnn"]
