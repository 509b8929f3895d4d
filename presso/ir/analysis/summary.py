"""A model summary: interface, op histogram, costs, size and annotations (what `inspect` shows)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..model import Model
from .cost import compute_cost
from .shapes import infer_tensor_infos


def _tensor_spec(tensor: gs.Tensor) -> dict[str, Any]:
    shape = list(tensor.shape) if tensor.shape is not None else None
    dtype = str(np.dtype(tensor.dtype)) if tensor.dtype is not None else None
    return {"name": tensor.name, "dtype": dtype, "shape": shape}


def summarize(model: Model, *, layers: bool = False) -> dict[str, Any]:
    """Everything `presso inspect` reports, as a JSON-ready dict.

    Keys: ``name``, ``opset``, ``opset_imports``, ``producer``, ``inputs``, ``outputs``,
    ``nodes``, ``op_counts``, ``params``, ``param_bytes``, ``flops``, ``macs``,
    ``activation_bytes``, ``peak_activation_bytes``, ``size_bytes``, ``initializer_dtypes``,
    ``unknown_cost_nodes``, ``annotations``; with ``layers=True`` also ``layers`` (per node).
    """
    cost = compute_cost(model)
    dtypes = collections.Counter()
    for const in model.initializers().values():
        dtypes[str(const.values.dtype)] += int(const.values.nbytes)
    annotations = model.annotations
    summary: dict[str, Any] = {
        "name": model.graph.name,
        "opset": model.opset,
        "opset_imports": dict(model.opset_imports),
        "producer": " ".join(p for p in model.producer if p),
        "inputs": [_tensor_spec(t) for t in model.graph.inputs],
        "outputs": [_tensor_spec(t) for t in model.graph.outputs],
        "nodes": len(model.graph.nodes),
        "op_counts": dict(collections.Counter(n.op for n in model.graph.nodes).most_common()),
        "params": cost.params,
        "param_bytes": cost.param_bytes,
        "flops": cost.flops,
        "macs": cost.macs,
        "activation_bytes": cost.activation_bytes,
        "peak_activation_bytes": cost.peak_activation_bytes,
        "size_bytes": model.byte_size(),
        "initializer_dtypes": dict(dtypes),
        "unknown_cost_nodes": list(cost.unknown),
        "annotations": {
            "quant": {k: dataclasses.asdict(v) for k, v in annotations.quant.items()},
            "sparsity": {k: dataclasses.asdict(v) for k, v in annotations.sparsity.items()},
            "pruning": [dataclasses.asdict(r) for r in annotations.pruning],
            "history": list(annotations.history),
        },
    }
    if layers:
        infos = infer_tensor_infos(model)
        by_name = cost.by_name()
        rows = []
        for node in model.graph.nodes:
            c = by_name.get(node.name)
            out = node.outputs[0] if node.outputs else None
            info = infos.get(out.name) if out is not None else None
            rows.append({
                "name": node.name,
                "op": node.op,
                "inputs": [t.name for t in node.inputs],
                "outputs": [t.name for t in node.outputs],
                "output_shape": list(info.shape) if info and info.shape is not None else None,
                "macs": c.macs if c else None,
                "flops": c.flops if c else None,
                "params": c.params if c else 0,
            })
        summary["layers"] = rows
    return summary
