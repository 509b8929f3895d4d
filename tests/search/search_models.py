"""Tiny models and data for the search tests: a small classifier (quantizable, prunable), and a
model whose int8 form is invalid (its outputs turn infinite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def classifier(path: Path, *, seed: int = 0) -> Path:
    """x [N, 3, 16, 16] → Conv 16 → Relu → Conv 16 → Relu → GlobalAveragePool → Gemm 10 → Softmax."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    inits = [_init("w1", rng.normal(0, 0.4, (16, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 16)),
             _init("w2", rng.normal(0, 0.15, (16, 16, 3, 3))), _init("b2", rng.normal(0, 0.1, 16)),
             _init("w3", rng.normal(0, 0.8, (10, 16))), _init("b3", rng.normal(0, 0.1, 10))]
    graph = helper.make_graph(nodes, "tiny-classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def log_of_relu(path: Path) -> Path:
    """x [N, 8] → MatMul (positive weights) → Relu → Log. With positive inputs its float
    outputs are finite; its int8 form rounds the small Relu outputs to 0 and Log gives −inf:
    an invalid model the search must record and step over. Data: :func:`positive_data`."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Relu", ["m"], ["r"], name="relu"),
             helper.make_node("Log", ["r"], ["y"], name="log")]
    graph = helper.make_graph(nodes, "log-of-relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [_init("w", rng.uniform(0.05, 1.0, (8, 8)))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def positive_data(path: Path, count: int, *, seed: int) -> Path:
    """[count, 8] inputs in (0, 1], every other sample scaled down 1000×."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.01, 1.0, (count, 8)).astype(np.float32)
    x[::2] *= 1e-3
    np.savez(path, x=x)
    return path


def data(path: Path, shape: tuple[int, ...], count: int, *, seed: int, name: str = "x") -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, **{name: rng.normal(0, 1, (count, *shape)).astype(np.float32)})
    return path
