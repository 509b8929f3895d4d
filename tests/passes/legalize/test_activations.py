"""fuse-hardswish, expand-hardsigmoid, div-to-mul on tiny graphs, compared with onnxruntime."""

from __future__ import annotations

import numpy as np
from _graphs import init, make_proto, ops, rand, run_pipeline, vi
from onnx import helper


def _hardswish_chain(tail: str):
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="mul")]
    if tail == "div":
        nodes.append(helper.make_node("Div", ["m", "six"], ["y"], name="div"))
    else:
        nodes.append(helper.make_node("Mul", ["m", "sixth"], ["y"], name="scale"))
    inits = [init("three", np.float32(3)), init("zero", np.float32(0)), init("six", np.float32(6)),
             init("sixth", np.float32(1 / 6))]
    return make_proto(nodes, [vi("x", [2, 8])], [vi("y", [2, 8])], inits)


def test_fuse_hardswish_both_spellings():
    for tail in ("div", "mul"):
        model, stats = run_pipeline(_hardswish_chain(tail), "fuse-hardswish", {"x": rand((2, 8)) * 8})
        assert ops(model) == ["HardSwish"] and stats["fused"] == 1
        assert model.output_names() == ["y"]


def test_fuse_hardswish_leaves_other_constants_and_old_opsets():
    proto = _hardswish_chain("div")
    proto.graph.initializer[2].CopyFrom(init("six", np.float32(5)))  # Clip(0, 5): not hard-swish
    model, stats = run_pipeline(proto, "fuse-hardswish", {"x": rand((2, 8)) * 8})
    assert "HardSwish" not in ops(model) and stats["fused"] == 0
    old = _hardswish_chain("div")
    old.opset_import[0].version = 13
    model, stats = run_pipeline(old, "fuse-hardswish", {"x": rand((2, 8))})
    assert stats["fused"] == 0


def test_expand_hardsigmoid_matches():
    nodes = [helper.make_node("HardSigmoid", ["x"], ["y"], name="hs", alpha=0.2, beta=0.5)]
    proto = make_proto(nodes, [vi("x", [4, 5])], [vi("y", [4, 5])])
    model, stats = run_pipeline(proto, "expand-hardsigmoid", {"x": rand((4, 5)) * 6})
    assert ops(model) == ["Mul", "Add", "Clip"] and stats["rewritten"] == 1


def test_div_by_constant_becomes_mul_but_not_by_variable():
    nodes = [helper.make_node("Div", ["x", "c"], ["a"], name="d1"),
             helper.make_node("Div", ["a", "x"], ["y"], name="d2")]
    proto = make_proto(nodes, [vi("x", [3])], [vi("y", [3])], [init("c", np.array([2, 4, 8], np.float32))])
    model, stats = run_pipeline(proto, "div-to-mul", {"x": rand((3,)) + 2})
    assert ops(model) == ["Mul", "Div"] and stats["rewritten"] == 1
