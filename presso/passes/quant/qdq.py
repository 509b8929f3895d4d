"""Helpers shared by the quantization passes: creating, reading and removing Q/DQ pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, insert_node_on_edge, is_graph_output, producer, replace_all_uses
from .qmath import dequantize
from .scheme import integer_type_of

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass
class QParams:
    """The scale/zero-point constants and axis of one Q or DQ node."""

    scale: gs.Constant
    zero_point: gs.Constant
    axis: int | None

    @property
    def dtype(self) -> str:
        return integer_type_of(self.zero_point.values.dtype)

    def same_values(self, other: QParams) -> bool:
        if self.scale is other.scale and self.zero_point is other.zero_point:
            return True
        a_s, b_s = np.asarray(self.scale.values), np.asarray(other.scale.values)
        a_z, b_z = np.asarray(self.zero_point.values), np.asarray(other.zero_point.values)
        return (a_z.dtype == b_z.dtype and a_s.shape == b_s.shape and a_z.shape == b_z.shape
                and np.array_equal(a_s, b_s) and np.array_equal(a_z.astype(np.int64), b_z.astype(np.int64))
                and (self.axis == other.axis or a_s.size == 1))


def qparams(node: gs.Node) -> QParams | None:
    """The constant parameters of a QuantizeLinear/DequantizeLinear node, or None."""
    if node.op not in ("QuantizeLinear", "DequantizeLinear") or len(node.inputs) < 3:
        return None
    scale, zero = node.inputs[1], node.inputs[2]
    if not (isinstance(scale, gs.Constant) and isinstance(zero, gs.Constant)):
        return None
    axis = node.attrs.get("axis", 1) if np.asarray(scale.values).size > 1 else None
    return QParams(scale, zero, axis)


def constant_quantizers(model: Model) -> list[tuple[gs.Node, QParams]]:
    """QuantizeLinear nodes on a constant (a weight or constant operand) with constant parameters."""
    found = []
    for q in model.nodes("QuantizeLinear"):
        params = qparams(q)
        if params is not None and isinstance(q.inputs[0], gs.Constant):
            found.append((q, params))
    return found


def small_list(values: np.ndarray) -> list | None:
    """Values for a QuantSpec annotation: per-tensor ones only (per-channel scales live in the
    graph; copying them into the metadata JSON would bloat the file)."""
    values = np.asarray(values)
    if values.size != 1:
        return None
    return [values.astype(np.float64).item()] if values.dtype.kind == "f" else [int(values.astype(np.int64).item())]


def qdq_attrs(axis: int | None) -> dict:
    return {"axis": int(axis)} if axis is not None else {}


def insert_qdq_pair(model: Model, tensor: gs.Tensor, scale: gs.Constant, zero: gs.Constant,
                    axis: int | None, *, consumers: list[gs.Node] | None) -> tuple[gs.Node, gs.Node]:
    """Put Q→DQ on ``tensor`` for ``consumers`` (None: every consumer and the graph outputs)."""
    attrs = qdq_attrs(axis)
    q = insert_node_on_edge(model, tensor, "QuantizeLinear", name=f"{tensor.name}_q",
                            extra_inputs=[scale, zero], attrs=attrs, only_for=consumers)
    # No dtype/shape on the pair's outputs: they would be written as value_info (≈ 2% of an
    # int8 file) and onnxruntime infers them anyway.
    q.outputs[0].dtype, q.outputs[0].shape = None, None
    dq = insert_node_on_edge(model, q.outputs[0], "DequantizeLinear", name=f"{tensor.name}_dq",
                             extra_inputs=[scale, zero], attrs=attrs)
    if not is_graph_output(model, dq.outputs[0]):
        dq.outputs[0].dtype, dq.outputs[0].shape = None, None
    else:  # a graph output keeps its declared type
        dq.outputs[0].dtype, dq.outputs[0].shape = tensor.dtype, tensor.shape
    return q, dq


def make_qparam_constants(model: Model, base: str, scale: np.ndarray, zero: np.ndarray
                          ) -> tuple[gs.Constant, gs.Constant]:
    return (add_initializer(model, f"{base}_scale", np.asarray(scale)),
            add_initializer(model, f"{base}_zero_point", np.asarray(zero)))


def float_source(dq: gs.Node) -> gs.Tensor | np.ndarray | None:
    """What a DequantizeLinear stands for in the float model: the Q's input, or the
    dequantized values of an integer constant (a folded weight or bias)."""
    params = qparams(dq)
    if params is None:
        return None
    src = dq.inputs[0]
    q = producer(src)
    if q is not None and q.op == "QuantizeLinear":
        return q.inputs[0]
    if isinstance(src, gs.Constant):
        return dequantize(src.values, params.scale.values, params.zero_point.values, params.axis,
                          dtype=np.asarray(params.scale.values).dtype)
    return None


def strip_qdq(model: Model) -> int:
    """Turn a fake-quantized (or folded) model back into float, in place; returns pairs removed.

    Every DequantizeLinear is bypassed: its consumers read the Q's float input, or a float
    constant holding the dequantized integers. Tensor names of Q inputs are kept (graph
    outputs keep their names too).
    """
    removed = 0
    for dq in model.nodes("DequantizeLinear"):
        source = float_source(dq)
        if source is None:
            continue
        if isinstance(source, np.ndarray):
            source = add_initializer(model, f"{dq.inputs[0].name}_float", source)
        replace_all_uses(model, dq.outputs[0], source)
        removed += 1
    model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model.invalidate()
    return removed
