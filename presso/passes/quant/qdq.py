"""Helpers shared by the quantization passes: creating, reading and removing Q/DQ pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, add_node, insert_node_on_edge, is_graph_output, producer, replace_all_uses
from .qmath import dequantize
from .scheme import INTEGER_TYPES, integer_type_of

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass
class QParams:
    """The scale/zero-point constants and axis of one Q or DQ node.

    ``implicit_zero``: the node has no zero point input (ONNX's default, zero); ``zero_point``
    is then a nameless stand-in holding those zeros — read its values, never wire it into a
    node.
    """

    scale: gs.Constant
    zero_point: gs.Constant
    axis: int | None
    implicit_zero: bool = False

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
    """The constant parameters of a QuantizeLinear/DequantizeLinear node, or None.

    A missing zero point (optional in ONNX: zero, of the DequantizeLinear input's type or
    QuantizeLinear's default uint8) gives ``implicit_zero=True``; ``fold-qdq`` drops all-zero
    zero points of integer constants that way.
    """
    if node.op not in ("QuantizeLinear", "DequantizeLinear") or len(node.inputs) < 2:
        return None
    scale = node.inputs[1]
    if not isinstance(scale, gs.Constant):
        return None
    axis = node.attrs.get("axis", 1) if np.asarray(scale.values).size > 1 else None
    if len(node.inputs) > 2 and node.inputs[2].name:
        zero = node.inputs[2]
        return QParams(scale, zero, axis) if isinstance(zero, gs.Constant) else None
    dtype = _implicit_zero_dtype(node)
    if dtype is None:
        return None
    zeros = gs.Constant("", np.zeros(np.shape(scale.values), dtype=dtype))
    return QParams(scale, zeros, axis, implicit_zero=True)


def _implicit_zero_dtype(node: gs.Node) -> np.dtype | None:
    if node.op == "QuantizeLinear":
        return None if "output_dtype" in node.attrs else np.dtype(np.uint8)
    x = node.inputs[0]
    dtype = x.values.dtype if isinstance(x, gs.Constant) else x.dtype
    try:
        dtype = np.dtype(dtype) if dtype is not None else None
    except TypeError:
        return None
    return dtype if dtype is not None and any(dtype == storage for storage, *_ in INTEGER_TYPES.values()) else None


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


def derive_bias_scales(model: Model) -> int:
    """Compute per-channel int32 bias scales in the graph instead of storing them.

    A quantized Conv/ConvTranspose/Gemm bias is ``DequantizeLinear(b_int32, s_x · s_w)``: its
    scale repeats what the input's and the weight's DequantizeLinear already hold (4 bytes per
    output channel, ≈ 0.6% of PP-OCRv4 det's float size). This makes the scale
    ``Mul(s_x, s_w)`` of those two constants. Only rewritten where float32 ``s_x · s_w``
    reproduces the stored scale bit for bit (what calibrate and bias-correction store), so the
    model computes exactly the same. Onnxruntime folds the Mul into an initializer when it
    loads the model (basic level and up) and fuses the same int8 kernels; Presso's
    ``fold-constants`` folds it back. Returns how many biases changed.
    """
    made: dict[tuple[int, int], gs.Tensor] = {}
    changed = 0
    for node in model.nodes("Conv", "ConvTranspose", "Gemm"):
        if len(node.inputs) < 3 or not node.inputs[2].name:
            continue
        dqs = [producer(t) for t in node.inputs[:3]]
        if any(dq is None or dq.op != "DequantizeLinear" for dq in dqs):
            continue
        (x_params, w_params, b_params) = (qparams(dq) for dq in dqs)
        if x_params is None or w_params is None or b_params is None:
            continue
        s_x, s_w, s_b = (np.asarray(p.scale.values) for p in (x_params, w_params, b_params))
        if (s_b.size < 2 or s_x.size != 1 or s_b.dtype != np.float32 or s_x.dtype != np.float32
                or s_w.dtype != np.float32 or s_w.shape != s_b.shape or not isinstance(dqs[2].inputs[0], gs.Constant)
                or np.dtype(dqs[2].inputs[0].values.dtype) != np.int32):
            continue
        product = s_x.reshape(()) * s_w  # float32 × float32, rounded once: what onnxruntime's Mul computes
        if product.dtype != np.float32 or product.tobytes() != s_b.tobytes():
            continue
        key = (id(x_params.scale), id(w_params.scale))
        if key not in made:
            mul = add_node(model, "Mul", [x_params.scale, w_params.scale], name=f"{node.name}_bias_scale",
                           dtype=np.float32, shape=list(s_b.shape))
            made[key] = mul.outputs[0]
        dqs[2].inputs[1] = made[key]
        changed += 1
    if changed:
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
    return changed


def scalarize_qparams(model: Model) -> int:
    """Store one-element per-tensor scales and zero points of Q/DQ nodes as rank-0 scalars.

    Exact (a ``[1]`` parameter without ``axis`` is per-tensor, like a scalar), 2 bytes smaller
    each, and what onnxruntime's QDQ fusions match: with ``[1]``-shaped parameters it keeps
    Add/Mul/Clip in float between Q/DQ pairs (PP-OCRv4 det: 88 Adds, 86 Muls, 24 Clips). A Mul
    of constants that computes a bias scale (see :func:`derive_bias_scales`) reads the scalar
    too. Returns how many parameters changed.
    """
    changed = 0
    replaced: dict[int, gs.Constant] = {}
    for node in model.nodes("QuantizeLinear", "DequantizeLinear"):
        if "axis" in node.attrs or "block_size" in node.attrs:
            continue  # per-axis or blocked parameters are 1-D by definition
        for index in (1, 2):
            if index >= len(node.inputs):
                continue
            param = node.inputs[index]
            if not isinstance(param, gs.Constant) or param.values is None or param.values.shape != (1,):
                continue
            if id(param) not in replaced:
                replaced[id(param)] = gs.Constant(param.name + "_scalar", np.asarray(param.values.reshape(())))
                changed += 1
            node.inputs[index] = replaced[id(param)]
    for mul in model.nodes("Mul"):  # Mul(s_x[1], s_w[C]) is [C] either way
        if all(isinstance(t, gs.Constant) for t in mul.inputs) and mul.outputs[0].outputs and all(
                c.op == "DequantizeLinear" and c.inputs[1] is mul.outputs[0] for c in mul.outputs[0].outputs):
            for index, t in enumerate(mul.inputs):
                if id(t) in replaced and np.asarray(mul.inputs[1 - index].values).ndim >= 1:
                    mul.inputs[index] = replaced[id(t)]
    if changed:
        model.graph.cleanup(remove_unused_graph_inputs=False)
        model.invalidate()
    return changed
