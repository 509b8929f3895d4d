"""Regression tests for what differential fuzzing (``benchmarks/fuzz.py``) found.

Each is a small hand-built graph reproducing one finding, named after what went wrong; the
docstring gives the fuzzed graph that first showed it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from _graphs import init, make_proto, reference, vi
from onnx import helper

from presso.ir import load
from presso.passes import PassManager


def _quantized_reshape_read_by_if_body() -> onnx.ModelProto:
    """Conv → Reshape, whose output feeds a ReduceSum (→ If condition) and both If branches."""
    rng = np.random.default_rng(0)
    then = helper.make_graph([helper.make_node("Tanh", ["r"], ["t"])], "then", [], [vi("t", [1, 36])])
    other = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [], [vi("e", [1, 36])])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    inits = [init("w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
             init("shape", np.array([1, -1], np.int64)), init("zero", np.array(0.0, np.float32))]
    return make_proto(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", [1, 36])], inits, opset=16)


_LOAD_WITH_BASIC_OPTIMIZATIONS = """
import sys, onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
"""


def test_insert_qdq_writes_no_dq_that_onnxruntime_propagates_into_an_if_body(tmp_path):
    """onnxruntime 1.32's QDQPropagationTransformer (basic optimizations and up) aborts the
    process when it moves a DQ through a Reshape whose output an If body also reads. Fuzzed
    graph 1076 (opset 16: Resize → Q/DQ → Reshape → ReduceSum → Greater → If reading the
    Reshape) crashed `fold-qdq`'s load check; insert-qdq now leaves that tensor in float."""
    proto = _quantized_reshape_read_by_if_body()
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 3)).astype(np.float32)
    model = load(proto)
    data = [{"x": np.random.default_rng(i).standard_normal((1, 2, 3, 3)).astype(np.float32)} for i in range(4)]
    PassManager.parse("insert-qdq,calibrate").run(model, data=data, progress=False)
    assert model.nodes("QuantizeLinear"), "the Conv should still be quantized"
    path = tmp_path / "calibrated.onnx"
    onnx.save(model.to_proto(), str(path))
    # in a child process: the bug kills the process instead of raising
    run = subprocess.run([sys.executable, "-c", _LOAD_WITH_BASIC_OPTIMIZATIONS, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    PassManager.parse("fold-qdq").run(model, progress=False)
    folded = model.to_proto()
    onnx.checker.check_model(folded, full_check=True)
    got = reference(folded, {"x": x})["y"]
    want = reference(proto, {"x": x})["y"]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.abs(got - want).max() < 0.2 * np.abs(want).max()  # int8: close, not exact


def test_calibrate_accepts_a_static_batch_above_one():
    """Models whose inputs have a static batch of 2 were refused by `calibrate` (it read the
    data one sample at a time: "input 'x' has size 1 on axis 0, the model expects 2"). Found
    on most fuzzed graphs with a static batch of 2."""
    rng = np.random.default_rng(0)
    proto = make_proto([helper.make_node("Conv", ["x", "w"], ["y"])], [vi("x", [2, 3, 4, 4])],
                       [vi("y", [2, 2, 2, 2])], [init("w", rng.standard_normal((2, 3, 3, 3)).astype(np.float32))])
    data = [{"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)} for _ in range(3)]
    model = load(proto)
    PassManager.parse("insert-qdq,calibrate,fold-qdq").run(model, data=data, progress=False)
    x = data[0]["x"]
    got = reference(model.to_proto(), {"x": x})["y"]
    want = reference(proto, {"x": x})["y"]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
