"""What the report shows, measured: a plain, JSON-ready dict that ``html.render`` draws.

Pipeline (the ``PipelineReport`` of the run, else the pass history saved in the model), the
precision of every layer (read from the compressed graph), per-layer error against the float
model, sensitivity when it is given or asked for, size and latency before and after
(``backends.benchmark.bench``: interleaved runs, the same inputs), and the graph drawing.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..ir import DataSource, Model, load
from ..ir.analysis.shapes import fix_input_shapes
from ..ir.errors import CalibrationError, PressoError
from ..passes import PipelineReport
from ..passes.quant.insert_qdq import WEIGHT_OPS
from ..passes.quant.scheme import PASS_THROUGH_OPS
from ..passes.quant.qdq import strip_qdq
from .layer_error import float_reference, layer_errors
from .layout import layered_layout
from .precision import display_names, layer_nodes, layer_precisions

# A layer of the per-layer tables and charts: a quantized node that computes values, or one
# that holds weights. Ops that only move values (Reshape, MaxPool…) or read shapes are left to
# the graph view: their error is their input's.
_WEIGHT_LIKE_OPS = (*WEIGHT_OPS, "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits",
                    "GatherBlockQuantized", "QGemm")
_NOT_LAYERS = (*PASS_THROUGH_OPS, "Shape", "Size")


def _is_layer(node, precision) -> bool:
    return node.op in _WEIGHT_LIKE_OPS or (precision.quantized and node.op not in _NOT_LAYERS)


def collect(
    before: Model | str | os.PathLike,
    after: Any,
    data: Any,
    *,
    pipeline: PipelineReport | Sequence[Mapping[str, Any]] | None = None,
    sensitivity: Any = None,
    reasons: Mapping[str, str] | None = None,
    samples: int = 16,
    runs: int = 10,
    threads: Sequence[int | str] = (1,),
    shapes: Mapping[str, Sequence[int]] | None = None,
    names: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Measure everything the report shows; see :func:`presso.report.report` for the arguments."""
    if samples < 1 or runs < 1:
        raise PressoError("samples and runs must be at least 1")
    before_model, before_name = _open_model(before, "BEFORE", shapes)
    after_model, after_bench, after_name = _open_after(after, shapes)
    if names:
        before_name, after_name = names
    if before_name == after_name:
        before_name, after_name = f"{before_name} (before)", f"{after_name} (after)"
    _check_same_interface(before_model, after_model, before_name, after_name)
    if data is None:
        raise CalibrationError("the report needs data to measure the models on",
                               hint="give --data with real samples (.npz or a folder of .npy/.npz), e.g. the "
                                    "evaluation data of the model")
    source = DataSource.open(data, before_model)
    feeds = list(source.feeds(limit=samples))
    notes: list[str] = []

    from ..backends.benchmark import bench

    bench_report = bench([before_model, after_bench], source, threads=threads, runs=runs, warmup=2,
                         samples=samples, names=["before", "after"], shapes=shapes)
    notes += bench_report.notes

    names = display_names(after_model) if after_model is not None else {}
    precisions = layer_precisions(after_model, names) if after_model is not None else {}
    errors = weights_only = None
    if after_model is not None:
        reference = float_reference(before_model)
        layers = [n for n in layer_nodes(after_model) if _is_layer(n, precisions[id(n)])]
        errors = layer_errors(reference, after_model, layers, feeds, names)
        try:
            weights_only = _weight_rounding_errors(reference, after_model, {names[id(n)] for n in layers}, feeds)
        except PressoError as exc:  # the model without its Q/DQ pairs does not run: leave the split out
            notes.append(f"the weights-only error is not shown: {exc}")
        if layers and not errors.errors and len(errors.not_compared) == len(layers):
            notes.append("no layer of the compressed model has a same-named output in the float model (a compiled "
                         "artifact's tensors are renamed): the output agreement above measures the error")
        elif errors.not_compared:
            notes.append(f"{len(errors.not_compared)} layer(s) have no counterpart in the float model (a pass renamed "
                         "or rewrote them; each row of the layer table says why) and have no per-layer error")
    else:
        notes.append("the compressed model is not an ONNX graph (a compiled library): no per-layer view")

    reasons = dict(reasons or {}) or _reasons_from_pipeline(pipeline, set(names.values()))
    layers_rows = []
    for node in (layer_nodes(after_model) if after_model is not None else []):
        precision = precisions[id(node)]
        if not _is_layer(node, precision):
            continue
        error = errors.errors.get(precision.name) if errors else None
        layers_rows.append({
            "name": precision.name, "op": node.op, "precision": precision.label,
            "activations": precision.activations or "float", "weights": precision.weights or (
                "float" if node.op in _WEIGHT_LIKE_OPS else "-"),
            "sqnr_db": error.as_dict()["sqnr_db"] if error else None,
            "exact": bool(error and error.as_dict()["exact"]),
            "cosine": error.cosine if error else None,
            "sqnr_weights_only_db": _finite_or_none(weights_only.get(precision.name)) if weights_only else None,
            "not_compared": errors.not_compared.get(precision.name) if errors else None,
            "reason": reasons.get(precision.name),
        })

    graph = None
    if after_model is not None:
        layout = layered_layout(after_model, names)
        by_name = {row["name"]: row for row in layers_rows}
        labels = {p.name: p.label for p in precisions.values()}
        graph = {"names": layout.names, "ops": layout.ops, "kinds": layout.kinds, "x": layout.x, "y": layout.y,
                 "edges": layout.edges,
                 "precision": [labels.get(n, "float") if k == "node" else k
                               for n, k in zip(layout.names, layout.kinds)],
                 "sqnr_db": [by_name.get(n, {}).get("sqnr_db") if k == "node" else None
                             for n, k in zip(layout.names, layout.kinds)]}

    return {
        "title": f"{before_name} → {after_name}",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "before": {"name": before_name, "nodes": len(before_model.graph.nodes)},
        "after": {"name": after_name, "nodes": len(after_model.graph.nodes) if after_model is not None else None},
        "data": {"source": str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
                 "samples_error": errors.samples if errors else 0, "samples_agreement": bench_report.samples},
        "pipeline": _pipeline_rows(pipeline),
        "history": [] if after_model is None else [
            {"pass": step.get("pass"), "options": step.get("options")} for step in after_model.annotations.history],
        "bench": bench_report.as_dict(),
        "layers": layers_rows,
        "sensitivity": _sensitivity_rows(sensitivity),
        "sensitivity_info": _sensitivity_info(sensitivity),
        "graph": graph,
        "notes": notes,
    }


def _weight_rounding_errors(reference: Model, after: Model, layer_names: set[str],
                            feeds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Layer → SQNR of the compressed model with every Q/DQ pair undone but its weights still
    rounded: the part of a layer's error that weight rounding alone causes (the rest is the
    rounding of activations). Layers are matched by node name (unnamed ones are left out)."""
    stripped = after.copy()
    strip_qdq(stripped)
    nodes = [n for n in layer_nodes(stripped) if n.name in layer_names]
    if not nodes:
        return {}
    result = layer_errors(reference, stripped, nodes, feeds)
    return {name: error.sqnr_db for name, error in result.errors.items()}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _open_model(item: Any, what: str, shapes: Mapping[str, Sequence[int]] | None) -> tuple[Model, str]:
    if isinstance(item, Model):
        model = item.copy() if shapes else item
        name = Path(item.source_path).name if item.source_path else (item.graph.name or what.lower())
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.is_dir():
            raise PressoError(f"{what} is a folder", where=str(path),
                              hint="give the .onnx model before compression first; only AFTER may be an artifact folder")
        model, name = load(path), path.name
    else:
        raise PressoError(f"{what} must be a model or the path of an .onnx file, not {type(item).__name__}")
    if shapes:
        fix_input_shapes(model, shapes)
    return model, name


def _open_after(item: Any, shapes: Mapping[str, Sequence[int]] | None) -> tuple[Model | None, Any, str]:
    """(the ONNX graph to inspect or None, what bench runs, display name) of the AFTER side."""
    from ..backends import Artifact, load_artifact

    artifact = None
    bench_item = item  # a folder goes to bench as a path: it counts the size of the files that ship
    if isinstance(item, Artifact):
        artifact, name = item, f"{item.backend} artifact"
    elif isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
        artifact, name, bench_item = load_artifact(item), Path(item).name, str(item)
    if artifact is None:
        model, name = _open_model(item, "AFTER", shapes)
        return model, model, name
    model = getattr(artifact, "model", None)
    model_file = (getattr(artifact, "folder", None) or Path()) / artifact.manifest.get("files", {}).get("model", "")
    if model is None and artifact.manifest.get("backend") == "onnxruntime" and model_file.is_file():
        model = load(model_file)  # an artifact read from its folder opens its model lazily
    if model is not None and shapes:
        model = model.copy()
        fix_input_shapes(model, shapes)
    return model, bench_item, name


def _check_same_interface(before: Model, after: Model | None, before_name: str, after_name: str) -> None:
    """The two models must be two versions of one model: same inputs, same number of outputs."""
    if after is None:
        return
    b_inputs = {t.name: t for t in before.data_inputs()}
    a_inputs = {t.name: t for t in after.data_inputs()}
    hint = "give the model before compression first and the compressed version of that same model second"
    if set(b_inputs) != set(a_inputs):
        raise PressoError(f"the models take different inputs: {sorted(b_inputs)} in {before_name}, "
                          f"{sorted(a_inputs)} in {after_name}", hint=hint)
    for name, tensor in b_inputs.items():
        other = a_inputs[name]
        if tensor.shape is not None and other.shape is not None and len(tensor.shape) != len(other.shape):
            raise PressoError(f"input '{name}' has rank {len(tensor.shape)} in {before_name} and "
                              f"{len(other.shape)} in {after_name}", hint=hint)
        if tensor.dtype is not None and other.dtype is not None and tensor.dtype != other.dtype:
            raise PressoError(f"input '{name}' is {tensor.dtype} in {before_name} and {other.dtype} in "
                              f"{after_name}", hint=hint)
    if len(before.graph.outputs) != len(after.graph.outputs):
        raise PressoError(f"the models have different outputs: {before.output_names()} in {before_name}, "
                          f"{after.output_names()} in {after_name}", hint=hint)


def _pipeline_rows(pipeline: PipelineReport | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    if pipeline is None:
        return None
    rows = pipeline.as_dict() if isinstance(pipeline, PipelineReport) else [dict(r) for r in pipeline]
    for row in rows:  # JSON has no infinity: an exact pass's SQNR is inf
        for key in ("error", "error_vs_original"):
            if row.get(key):
                row[key] = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                            for k, v in row[key].items()}
    return rows


def _reasons_from_pipeline(pipeline: Any, layer_names: set[str]) -> dict[str, str]:
    """Layer → why, from the log of a ``mixed-precision`` pass in the pipeline (one
    ``"NAME: LEVEL (why)"`` line per layer)."""
    if not isinstance(pipeline, PipelineReport):
        return {}
    reasons: dict[str, str] = {}
    for record in pipeline.records:
        if record.name != "mixed-precision":
            continue
        for line in record.result.log:
            name, sep, rest = line.partition(": ")
            if sep and name in layer_names:
                reasons[name] = rest
    return reasons


def _sensitivity_info(sensitivity: Any) -> dict[str, Any] | None:
    """The whole-model numbers of a sensitivity result: metric, float and int8 scores."""
    if sensitivity is None or not hasattr(sensitivity, "metric"):
        return None
    info = {"metric": str(sensitivity.metric)}
    for key in ("reference_score", "int8_score", "int8_sqnr", "samples", "cached"):
        value = getattr(sensitivity, key, None)
        if isinstance(value, (int, float)):
            info[key] = value if not isinstance(value, float) or math.isfinite(value) else None
    return info


def _sensitivity_rows(sensitivity: Any) -> list[dict[str, Any]] | None:
    """Per-layer sensitivity as rows {"layer": name, measure: value, ...}, from a result object
    (``rows``/``as_dict()``/``layers``), a list of dicts, or a {layer: {measure: value}} mapping."""
    if sensitivity is None:
        return None
    value = sensitivity
    for attribute in ("as_dict", "to_dict"):
        if hasattr(value, attribute):
            value = getattr(value, attribute)()
            break
    if isinstance(value, Mapping):
        for key in ("layers", "rows"):
            if key in value and not isinstance(value[key], (int, float)):
                value = value[key]
                break
    if hasattr(value, "rows") and not isinstance(value, (list, tuple, Mapping)):
        value = value.rows
    rows = []
    if isinstance(value, Mapping):
        items = [{"layer": k, **(v if isinstance(v, Mapping) else {"value": v})} for k, v in value.items()]
    else:
        items = [v if isinstance(v, Mapping) else getattr(v, "__dict__", {}) for v in value]
    for item in items:
        name = item.get("layer") or item.get("name") or item.get("node")
        if name is None:
            continue
        measures = {k: float(v) for k, v in item.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("layer", "name", "node")}
        rows.append({"layer": str(name), **{k: (v if math.isfinite(v) else None) for k, v in measures.items()}})
    return rows
