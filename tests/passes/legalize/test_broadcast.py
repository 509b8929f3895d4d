"""onehot-to-gather, remove-expand, max-to-clip, static-shapes."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, ops, rand, run_pipeline, vi
from onnx import helper

from presso.ir import PassError, load
from presso.passes import PassManager


def test_onehot_matmul_becomes_gather():
    k, n = 7, 5
    nodes = [helper.make_node("Unsqueeze", ["idx", "last"], ["u"], name="unsq"),
             helper.make_node("Equal", ["u", "iota"], ["eq"], name="eq"),
             helper.make_node("Cast", ["eq"], ["oh"], name="cast", to=1),
             helper.make_node("MatMul", ["oh", "w"], ["y"], name="mm")]
    inits = [init("last", np.array([-1], np.int64)), init("iota", np.arange(k, dtype=np.int32)),
             init("w", rand((k, n)))]
    proto = make_proto(nodes, [vi("idx", [2, 3], np.int32)], [vi("y", [2, 3, n])], inits)
    idx = np.array([[0, 6, 3], [2, 2, 1]], np.int32)
    model, stats = run_pipeline(proto, "onehot-to-gather,eliminate-dead-code", {"idx": idx})
    assert stats["rewritten"] == 1 and "MatMul" not in ops(model) and "Gather" in ops(model)


def test_remove_expand_and_max_to_clip():
    nodes = [helper.make_node("Expand", ["b", "shape"], ["be"], name="expand"),
             helper.make_node("Add", ["x", "be"], ["a"], name="add"),
             helper.make_node("Max", ["a", "floor"], ["y"], name="max")]
    inits = [init("shape", np.array([4, 6], np.int64)), init("floor", np.float32(0.1))]
    proto = make_proto(nodes, [vi("x", [4, 6]), vi("b", [4, 1])], [vi("y", [4, 6])], inits)
    model, stats = run_pipeline(proto, "remove-expand,max-to-clip", {"x": rand((4, 6)), "b": rand((4, 1), seed=3)})
    assert ops(model) == ["Add", "Clip"] and stats["removed"] == 1 and stats["rewritten"] == 1


def test_static_shapes_from_data_and_without_data():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    proto = make_proto(nodes, [vi("x", ["n", 3])], [vi("y", ["n", 3])])
    model = load(proto)
    PassManager.parse("static-shapes").run(model, data={"x": rand((5, 3))})
    assert list(model.graph.inputs[0].shape) == [1, 3]
    with pytest.raises(PassError, match="dynamic shapes"):
        PassManager.parse("static-shapes").run(load(proto))
