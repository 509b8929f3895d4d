"""Lowering DQ→op→Q groups to ONNX QOperator ops (used by ``fold-qdq{qoperator=true}``).

``QLinearConv`` / ``QLinearMatMul`` when the op's output is requantized by a single Q;
``ConvInteger`` / ``MatMulInteger`` + Cast + Mul(scale) (+ Add(bias)) when it stays float.
Only 8-bit integer types with per-tensor activations qualify (what the ops define).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, add_node, is_graph_output, producer, replace_all_uses
from .qdq import QParams, qparams
from .qmath import dequantize

_EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))


def _dequantized(tensor: gs.Tensor) -> tuple[gs.Tensor, QParams] | None:
    """(integer tensor, params) if ``tensor`` comes from an 8-bit DequantizeLinear."""
    dq = producer(tensor)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    params = qparams(dq)
    if params is None or params.zero_point.values.dtype not in _EIGHT_BIT:
        return None
    return dq.inputs[0], params


def _requantized(model: Model, tensor: gs.Tensor) -> gs.Node | None:
    """The single Q that consumes ``tensor`` (and nothing else does), looking through a
    Relu/Clip that the Q's range makes redundant (zero point at the type's minimum)."""
    if len(tensor.outputs) != 1 or is_graph_output(model, tensor):
        return None
    q = tensor.outputs[0]
    if q.op in ("Relu", "Clip"):
        act = q
        q = _requantized(model, act.outputs[0])
        if q is None or not _activation_redundant(act, qparams(q)):
            return None
    params = qparams(q)
    if q.op != "QuantizeLinear" or params is None or params.axis is not None:
        return None
    return q if params.zero_point.values.dtype in _EIGHT_BIT else None


def _activation_redundant(act: gs.Node, params: QParams) -> bool:
    """Relu/Clip(0, hi) add nothing when the Q after them already clamps to [0, ≤ hi]."""
    zero = np.asarray(params.zero_point.values).astype(np.int64)
    info = np.iinfo(params.zero_point.values.dtype)
    if zero.size != 1 or int(zero.ravel()[0]) != info.min:
        return False
    if act.op == "Relu":
        return True
    bounds = [t for t in act.inputs[1:3]]
    lo = float(bounds[0].values) if bounds and isinstance(bounds[0], gs.Constant) else -np.inf
    hi = float(bounds[1].values) if len(bounds) > 1 and isinstance(bounds[1], gs.Constant) else np.inf
    top = float(np.asarray(params.scale.values).ravel()[0]) * (info.max - info.min)
    return lo == 0.0 and top <= hi


def _int32_bias(tensor: gs.Tensor) -> gs.Constant | None:
    dq = producer(tensor)
    if dq is None or dq.op != "DequantizeLinear" or not isinstance(dq.inputs[0], gs.Constant):
        return None
    return dq.inputs[0] if dq.inputs[0].values.dtype == np.int32 else None


class _Zeros:
    """Explicit zero points for QOperator inputs whose DequantizeLinear had none (``fold-qdq``
    drops all-zero weight zero points): one scalar per integer type, shared by every node
    (the ops take a scalar zero point with per-channel scales)."""

    def __init__(self, model: Model):
        self.model = model
        self.made: dict[np.dtype, gs.Constant] = {}

    def __call__(self, params: QParams) -> gs.Constant:
        if not params.implicit_zero:
            return params.zero_point
        dtype = np.dtype(params.zero_point.values.dtype)
        if dtype not in self.made:
            self.made[dtype] = add_initializer(self.model, f"zero_{dtype.name}", np.zeros((), dtype))
        return self.made[dtype]


def _float_bias(bias: gs.Tensor) -> np.ndarray | None:
    """A bias's float values: a float constant, or a DequantizeLinear of constants; else None."""
    if isinstance(bias, gs.Constant):
        return np.asarray(bias.values)
    dq = producer(bias)
    params = qparams(dq) if dq is not None and dq.op == "DequantizeLinear" else None
    if params is None or not isinstance(dq.inputs[0], gs.Constant):
        return None
    return dequantize(dq.inputs[0].values, params.scale.values, params.zero_point.values, params.axis,
                      dtype=np.asarray(params.scale.values).dtype)


def lower_to_qoperators(model: Model) -> dict[str, int]:
    counts = {"qlinearconv": 0, "qlinearmatmul": 0, "convinteger": 0, "matmulinteger": 0}
    zero = _Zeros(model)
    for node in model.nodes("Conv", "MatMul"):
        a = _dequantized(node.inputs[0])
        b = _dequantized(node.inputs[1])
        if a is None or b is None or a[1].axis is not None or not isinstance(b[0], gs.Constant):
            continue
        (x, xp), (w, wp) = a, b
        if xp.implicit_zero:
            continue  # an activation without a zero point: not what fold-qdq makes; leave it
        y = node.outputs[0]
        q = _requantized(model, y)
        if node.op == "Conv":
            bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
            if q is not None and (bias is None or _int32_bias(bias) is not None):
                yp = qparams(q)
                if yp.implicit_zero:
                    continue
                inputs = [x, xp.scale, xp.zero_point, w, wp.scale, zero(wp), yp.scale, yp.zero_point]
                if bias is not None:
                    inputs.append(_int32_bias(bias))
                new = add_node(model, "QLinearConv", inputs, name=f"{node.name}_quant", attrs=node.attrs,
                               dtype=q.outputs[0].dtype, shape=q.outputs[0].shape)
                replace_all_uses(model, q.outputs[0], new.outputs[0])
                counts["qlinearconv"] += 1
            elif (q is None and (np.asarray(wp.zero_point.values).size == 1 or not np.any(wp.zero_point.values))
                  and (bias is None or _float_bias(bias) is not None)):
                _integer_op(model, node, "ConvInteger", x, xp, w, wp, bias, zero(wp))
                counts["convinteger"] += 1
            else:
                continue
        else:
            if q is not None:
                yp = qparams(q)
                if yp.implicit_zero:
                    continue
                new = add_node(model, "QLinearMatMul",
                               [x, xp.scale, xp.zero_point, w, wp.scale, zero(wp), yp.scale, yp.zero_point],
                               name=f"{node.name}_quant", dtype=q.outputs[0].dtype, shape=q.outputs[0].shape)
                replace_all_uses(model, q.outputs[0], new.outputs[0])
                counts["qlinearmatmul"] += 1
            else:
                _integer_op(model, node, "MatMulInteger", x, xp, w, wp, None, zero(wp))
                counts["matmulinteger"] += 1
        node.outputs.clear()  # the replaced float op is now dead; cleanup removes it
    return counts


def _integer_op(model: Model, node: gs.Node, op: str, x, xp: QParams, w, wp: QParams, bias,
                w_zero: gs.Constant) -> None:
    """int op on integers → Cast(float) → Mul(x_scale · w_scale) [→ Add(float bias)]."""
    y = node.outputs[0]
    dtype = np.asarray(xp.scale.values).dtype
    attrs = dict(node.attrs) if op == "ConvInteger" else {}
    if op == "ConvInteger" and np.asarray(w_zero.values).size > 1:
        # onnxruntime's ConvInteger takes a per-tensor weight zero point only (fine when symmetric)
        w_zero = add_initializer(model, f"{w.name}_zero_point_scalar", np.asarray(w_zero.values).ravel()[:1].reshape(()))
    integer = add_node(model, op, [x, w, xp.zero_point, w_zero], name=f"{node.name}_integer", attrs=attrs,
                       dtype=np.int32)
    cast = add_node(model, "Cast", integer.outputs, name=f"{node.name}_cast", attrs={"to": 1}, dtype=dtype)
    scale = np.asarray(xp.scale.values, np.float64) * np.asarray(wp.scale.values, np.float64)
    # per output channel: axis 1 of a conv output ([C, 1, 1…] broadcasts), the last of a matmul
    channel_shape = [-1, *([1] * (w.values.ndim - 2))] if op == "ConvInteger" else [-1]
    if scale.size > 1:
        scale = scale.reshape(channel_shape)
    factor = add_initializer(model, f"{node.name}_rescale", scale.astype(dtype))
    out = add_node(model, "Mul", [cast.outputs[0], factor], name=f"{node.name}_rescale", dtype=dtype)
    if bias is not None:
        values = _float_bias(bias).astype(dtype)
        b = add_initializer(model, f"{node.name}_bias_float", values.reshape(channel_shape))
        out = add_node(model, "Add", [out.outputs[0], b], name=f"{node.name}_bias", dtype=dtype)
    replace_all_uses(model, y, out.outputs[0])
