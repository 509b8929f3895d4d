"""The precision each layer of a model runs at, read from the graph itself.

A layer is a node that computes (not a QuantizeLinear/DequantizeLinear, not a Constant). Its
precision comes from where its inputs come from: a DequantizeLinear of an integer constant is
a quantized weight, a DequantizeLinear of a computed tensor (a Q's output, a graph input) is
a quantized activation, a DynamicQuantizeLinear upstream is a dynamically quantized one, and
the QOperator forms (QLinearConv, MatMulInteger, MatMulNBits, …) carry their types on their
operands. The label says both, ``a8w8`` (int8 activations and weights), ``a16w8``, ``w4``
(weight-only), ``a8`` (a quantized op without weights, e.g. Add or Concat) or ``float``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import Model

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops whose operands are integers themselves: (activation input indices, weight input indices).
_INTEGER_OPERAND_OPS = {
    "QLinearConv": ((0,), (3,)),
    "QLinearMatMul": ((0,), (3,)),
    "ConvInteger": ((0,), (1,)),
    "MatMulInteger": ((0,), (1,)),
    "QGemm": ((0,), (3,)),
}
_WEIGHT_ONLY_OPS = ("MatMulNBits", "GatherBlockQuantized")


@dataclass
class LayerPrecision:
    """How one node computes: the integer types of its activation and weight operands."""

    name: str
    op: str
    activations: str | None = None  # e.g. "uint8", "uint16", "uint8 dynamic"; None: float
    weights: str | None = None  # e.g. "int8", "int4"; None: float or no weight

    @property
    def label(self) -> str:
        act = _bits(self.activations)
        wgt = _bits(self.weights)
        if act and wgt:
            return f"a{act}w{wgt}"
        if wgt:
            return f"w{wgt}"
        if act:
            return f"a{act}"
        return "float"

    @property
    def quantized(self) -> bool:
        return self.label != "float"


def _bits(dtype: str | None) -> int | None:
    if not dtype:
        return None
    digits = "".join(ch for ch in dtype.split()[0] if ch.isdigit())
    return int(digits) if digits else None


def layer_nodes(model: Model) -> list[gs.Node]:
    """The nodes that compute, in graph order: every node but Q/DQ and Constant."""
    return [n for n in model.graph.nodes if n.op not in QDQ_OPS and n.op != "Constant"]


def display_names(model: Model) -> dict[int, str]:
    """id(node) → a name that is unique and not empty: the node's own when it is, else
    ``OP#INDEX`` (ONNX allows unnamed and repeated node names)."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for index, node in enumerate(model.graph.nodes):
        name = base = node.name or f"{node.op}#{index}"
        while name in used:
            name = f"{base}#{index}"
            base = name
        used.add(name)
        names[id(node)] = name
    return names


def layer_precisions(model: Model, names: dict[int, str] | None = None) -> dict[int, LayerPrecision]:
    """id(node) → :class:`LayerPrecision` for every node of :func:`layer_nodes`, named by
    ``names`` (default :func:`display_names`)."""
    names = names or display_names(model)
    return {id(node): _precision(node, names[id(node)]) for node in layer_nodes(model)}


def _precision(node: gs.Node, name: str) -> LayerPrecision:
    result = LayerPrecision(name, node.op)
    if node.op in _INTEGER_OPERAND_OPS:
        act_index, weight_index = _INTEGER_OPERAND_OPS[node.op]
        result.activations = _first_dtype(node, act_index)
        result.weights = _first_dtype(node, weight_index)
        return result
    if node.op in _WEIGHT_ONLY_OPS:
        bits = node.attrs.get("bits", 4)
        result.weights = f"int{bits}"
        return result
    for tensor in node.inputs:
        kind, dtype = _operand(tensor)
        if kind == "weight" and dtype != "int32":  # an int32 operand is a requantized bias
            result.weights = result.weights or dtype
        elif kind == "activation":
            result.activations = result.activations or dtype
    return result


def _first_dtype(node: gs.Node, indices: tuple[int, ...]) -> str | None:
    for index in indices:
        if index >= len(node.inputs):
            continue
        tensor = node.inputs[index]
        source = tensor.inputs[0] if tensor.inputs else None
        if source is not None and source.op == "DynamicQuantizeLinear":
            return "uint8 dynamic"
        if tensor.dtype is not None:
            return _dtype_name(tensor.dtype)
        if source is not None and source.op == "QuantizeLinear":  # its zero point's type, else ONNX's uint8
            zero_point = source.inputs[2] if len(source.inputs) > 2 else None
            return _dtype_name(zero_point.dtype) if zero_point is not None and zero_point.dtype is not None else "uint8"
    return None


def _operand(tensor: gs.Tensor) -> tuple[str | None, str | None]:
    """('weight' | 'activation' | None, integer dtype) of what feeds one input."""
    source = tensor.inputs[0] if tensor.inputs else None
    if source is None:
        return None, None
    if source.op == "DynamicQuantizeLinear":
        return "activation", "uint8 dynamic"
    if source.op != "DequantizeLinear" or not source.inputs:
        return None, None
    quantized = source.inputs[0]
    dtype = _integer_dtype(source)
    if isinstance(quantized, gs.Constant):
        return "weight", dtype
    upstream = quantized.inputs[0] if quantized.inputs else None
    if upstream is not None and upstream.op == "DynamicQuantizeLinear":
        return "activation", f"{dtype} dynamic" if dtype else "uint8 dynamic"
    if upstream is not None and upstream.op == "QuantizeLinear" and isinstance(upstream.inputs[0], gs.Constant):
        return "weight", dtype  # a weight kept in Q/DQ form (not folded)
    return "activation", dtype


def _integer_dtype(dq: gs.Node) -> str:
    """The integer type a DequantizeLinear reads: its input's, else its zero point's (a Q's output
    has no type in graphsurgeon before shape inference), else ONNX's default, uint8."""
    quantized = dq.inputs[0]
    if quantized.dtype is not None:
        return _dtype_name(quantized.dtype)
    if len(dq.inputs) > 2 and dq.inputs[2].dtype is not None:
        return _dtype_name(dq.inputs[2].dtype)
    return "uint8"


def _dtype_name(dtype) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)
