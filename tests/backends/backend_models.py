"""Tiny models for the onnxruntime backend and bench tests (imported by tests/backends/*)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_model(opset: int = 13, *, batch="N", weights_as_constants: bool = False, scale: float = 1.0) -> onnx.ModelProto:
    """x[N,3,8,8] → Conv(4, 3×3, pad 1) → Relu → GlobalAveragePool → Flatten → y[N,4]."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * scale).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flatten"),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if weights_as_constants:  # as Paddle2ONNX exports them
        nodes = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in inits] + nodes
        inits = []
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def softmax_model(scale: float = 1.0, noise: float = 0.0) -> onnx.ModelProto:
    """x[N,16] → MatMul(16×10) → Softmax → p[N,10]; ``noise`` perturbs the weights."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 10)).astype(np.float32) * scale
    w = w + noise * np.random.default_rng(2).standard_normal(w.shape).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Softmax", ["m"], ["p"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def qdq_conv_model(act: str = "uint8") -> onnx.ModelProto:
    """A QDQ conv: x → Q/DQ(act) → Conv(DQ(int8 per-channel w), int32 bias) → Q/DQ(act) → y."""
    rng = np.random.default_rng(3)
    np_act = np.uint8 if act == "uint8" else np.int8
    zp = 128 if act == "uint8" else 0
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w_scale = rng.uniform(0.005, 0.02, 4).astype(np.float32)
    x_scale, y_scale = np.float32(4 / 255), np.float32(0.2)
    bias = rng.integers(-500, 500, 4).astype(np.int32)
    inits = [
        numpy_helper.from_array(np.array(x_scale), "x_scale"), numpy_helper.from_array(np.array(zp, np_act), "x_zp"),
        numpy_helper.from_array(np.array(y_scale), "y_scale"), numpy_helper.from_array(np.array(zp, np_act), "y_zp"),
        numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(bias, "b_q"), numpy_helper.from_array((w_scale * x_scale).astype(np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="dq_b", axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["cq"], name="q_c"),
        helper.make_node("DequantizeLinear", ["cq", "y_scale", "y_zp"], ["y"], name="dq_c"),
    ]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


