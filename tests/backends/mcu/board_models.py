"""Small float models for the board-side Cortex-M tests (quantized in the tests with the target)."""

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper


def small_cnn(seed: int = 0, channels: int = 8, classes: int = 5) -> ModelProto:
    """x[1,1,8,8] → Conv(C, 3×3, pad 1) → Relu → MaxPool 2×2 → Conv(C, 3×3) → Relu → Flatten
    → Gemm(classes) → Softmax → p[1,classes]: the shape of a tiny image classifier."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((channels, 1, 3, 3)) * 0.5).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.2).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), "b2"),
        numpy_helper.from_array((rng.standard_normal((classes, channels * 4)) * 0.3).astype(np.float32), "w3"),
        numpy_helper.from_array((rng.standard_normal(classes) * 0.1).astype(np.float32), "b3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[0, 0, 0, 0]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def calibration(count: int = 16, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(count)]


def wide_conv(side: int, channels: int = 8) -> ModelProto:
    """x[1,1,side,side] → Conv(channels, 3×3, pad 1) → y: activations of channels·side² bytes in int8."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((channels, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(channels, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="wide", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "wide_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, side, side])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
