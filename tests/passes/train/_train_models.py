"""Tiny models and data for the training-pass tests (built with onnx.helper)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from presso.ir import Model


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    return Model.from_proto(proto)


def small_cnn(seed: int = 0, classes: int = 4, channels: int = 8, size: int = 8) -> Model:
    """Conv → BN → Relu → Conv → GlobalAveragePool → Flatten → Gemm → Softmax on [N,1,size,size]."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = {
        "w1": (rng.standard_normal((channels, 1, 3, 3)) * 0.5).astype(f32),
        "b1": (rng.standard_normal(channels) * 0.1).astype(f32),
        "gamma": rng.uniform(0.5, 1.5, channels).astype(f32), "beta": (rng.standard_normal(channels) * 0.1).astype(f32),
        "mean": (rng.standard_normal(channels) * 0.1).astype(f32), "var": rng.uniform(0.5, 1.5, channels).astype(f32),
        "w2": (rng.standard_normal((channels, channels, 3, 3)) * 0.2).astype(f32),
        "b2": np.zeros(channels, f32),
        "fc": (rng.standard_normal((classes, channels)) * 0.5).astype(f32),
        "fcb": np.zeros(classes, f32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        inits,
    )


def blob_task(n: int = 128, classes: int = 4, size: int = 8, seed: int = 1):
    """A learnable image task: the class decides which quadrant of the image is bright."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, 1, size, size)).astype(np.float32) * 0.3
    half = size // 2
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        x[i, 0, r * half:(r + 1) * half, q * half:(q + 1) * half] += 1.0
    return x, labels.astype(np.int64)



def accuracy(model: Model, x: np.ndarray, y: np.ndarray, output: str = "probs") -> float:
    """Top-1 accuracy computed by onnxruntime (the reference), not by the training executor."""
    from presso.ir import evaluate

    return float((evaluate(model, {"x": x})[output].argmax(1) == y).mean())


def kl_to(teacher: Model, student: Model, x: np.ndarray, output: str = "probs") -> float:
    """Mean KL(teacher ‖ student) of the softmax outputs, computed by onnxruntime."""
    from presso.ir import evaluate

    p = evaluate(teacher, {"x": x})[output].astype(np.float64)
    q = evaluate(student, {"x": x})[output].astype(np.float64)
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))
