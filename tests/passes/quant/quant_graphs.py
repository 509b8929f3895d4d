"""Tiny float graphs for the quantization tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from presso.ir import load


def _model(nodes, inputs, outputs, inits, opset=13):
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return load(proto)


def conv_net(opset: int = 13, *, weights_in_constants: bool = False):
    """x → Conv(+bias) → Relu → MaxPool → Conv → Add(residual) → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    b2 = rng.standard_normal(8).astype(np.float32) * 0.1
    wg = rng.standard_normal((8, 5)).astype(np.float32)
    bg = rng.standard_normal(5).astype(np.float32)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, v.shape, v.ravel()) for n, v in
             [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("wg", wg), ("bg", bg)]]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "p1"], ["a1"], name="add1"),
        helper.make_node("GlobalAveragePool", ["a1"], ["g1"], name="gap"),
        helper.make_node("Flatten", ["g1"], ["f1"], name="flatten"),
        helper.make_node("Gemm", ["f1", "wg", "bg"], ["y"], name="fc"),
    ]
    if weights_in_constants:
        consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}") for t in inits]
        nodes, inits = consts + nodes, []
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits, opset)


def matmul_net(k: int = 64, n: int = 48):
    """x[N, 16, k] → MatMul(W[k, n]) → Add(bias) → Relu → MatMul(W2[n, 8])."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.2
    b = rng.standard_normal(n).astype(np.float32) * 0.1
    w2 = rng.standard_normal((n, 8)).astype(np.float32) * 0.2
    inits = [helper.make_tensor(nm, TensorProto.FLOAT, v.shape, v.ravel()) for nm, v in [("w", w), ("b", b), ("w2", w2)]]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm1"),
             helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, k])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8])], inits)
