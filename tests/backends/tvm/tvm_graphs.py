"""Shared helpers for the TVM backend tests: tiny ONNX graphs and the onnxruntime reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import presso


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> presso.Model:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return presso.load(proto)


def reference(model: presso.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.to_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close(got, want, rtol=1e-4, atol=1e-5):
    """Elementwise ≤ atol + rtol·max|want| (the relative bound of the issue: 1e-3 for float)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    bound = atol + rtol * float(np.abs(want).max(initial=0.0))
    assert float(np.abs(got.astype(np.float64) - want).max(initial=0.0)) <= bound


def conv_model(cin=3, cout=8, size=(10, 13), kernel=3, stride=1, pad=1, group=1, seed=0) -> presso.Model:
    """Conv → BatchNormalization → Relu → GlobalAveragePool → Flatten → Gemm: a tiny CNN."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin // group, kernel, kernel)).astype(np.float32) * 0.3
    b = rng.standard_normal(cout).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, cout), rng.standard_normal(cout), rng.standard_normal(cout) * 0.1,
          rng.uniform(0.5, 1.5, cout)]
    fc = rng.standard_normal((5, cout)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             *[numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in zip(bn, ["g", "beta", "mean", "var"])],
             numpy_helper.from_array(fc, "fc")]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[pad] * 4, strides=[stride] * 2,
                         group=group),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *size])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
