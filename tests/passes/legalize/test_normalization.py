"""fuse-layernorm, fuse-softmax, fuse-gelu: decomposed chains become one op, same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, ops, rand, run_pipeline, vi
from onnx import helper

from presso.ir import load
from presso.passes import PassManager


def _layernorm_mean_form(shape, axis):
    n = shape[axis]
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["mean"], name="mean", keepdims=1),
             helper.make_node("Sub", ["x", "mean"], ["d"], name="sub"),
             helper.make_node("Mul", ["d", "d"], ["d2"], name="sq"),
             helper.make_node("ReduceMean", ["d2", "axes"], ["var"], name="var", keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="addeps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
             helper.make_node("Reciprocal", ["sd"], ["r"], name="recip"),
             helper.make_node("Mul", ["r", "gamma"], ["scale"], name="gamma_mul"),
             helper.make_node("Mul", ["d", "scale"], ["n"], name="norm"),
             helper.make_node("Add", ["n", "beta"], ["y"], name="beta_add")]
    bshape = [1] * len(shape)
    bshape[axis] = n
    inits = [init("axes", np.array([axis], np.int64)), init("eps", np.float32(1e-5)),
             init("gamma", rand(bshape, seed=1)), init("beta", rand(bshape, seed=2))]
    return make_proto(nodes, [vi("x", shape)], [vi("y", shape)], inits, opset=18)


@pytest.mark.parametrize("axis", [2, 1])
def test_fuse_layernorm_last_and_inner_axis(axis):
    proto = _layernorm_mean_form([2, 6, 16], axis)
    model, stats = run_pipeline(proto, "fuse-layernorm,eliminate-dead-code", {"x": rand((2, 6, 16)) * 3 + 1},
                                rtol=1e-4, atol=1e-4)
    assert stats["fused"] == 1
    want = ["LayerNormalization"] if axis == 2 else ["Transpose", "LayerNormalization", "Transpose"]
    assert ops(model) == want


def test_fuse_layernorm_refuses_a_wrong_divisor():
    # ReduceSum · (1/(n+1)) is not a mean: nothing may fuse
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], name="sum", keepdims=1),
             helper.make_node("Mul", ["s", "inv"], ["mean"], name="mean"),
             helper.make_node("Sub", ["x", "mean"], ["d"], name="sub"),
             helper.make_node("Mul", ["d", "d"], ["d2"], name="sq"),
             helper.make_node("ReduceMean", ["d2", "axes"], ["var"], name="var", keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="addeps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
             helper.make_node("Reciprocal", ["sd"], ["r"], name="recip"),
             helper.make_node("Mul", ["d", "r"], ["y"], name="norm")]
    inits = [init("axes", np.array([-1], np.int64)), init("inv", np.float32(1 / 9)), init("eps", np.float32(1e-5))]
    proto = make_proto(nodes, [vi("x", [2, 8])], [vi("y", [2, 8])], inits, opset=18)
    model, stats = run_pipeline(proto, "fuse-layernorm", {"x": rand((2, 8))})
    assert stats["fused"] == 0 and "LayerNormalization" not in ops(model)


def test_fuse_softmax_with_clamped_max():
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], name="max", axes=[1], keepdims=0),
             helper.make_node("Max", ["floor", "m"], ["mc"], name="clamp"),
             helper.make_node("Unsqueeze", ["mc", "one"], ["mu"], name="unsq"),
             helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
             helper.make_node("Exp", ["d"], ["e"], name="exp"),
             helper.make_node("ReduceSum", ["e", "one"], ["s"], name="sum", keepdims=1),
             helper.make_node("Div", ["e", "s"], ["y"], name="div")]
    inits = [init("floor", np.float32(-1e30)), init("one", np.array([1], np.int64))]
    proto = make_proto(nodes, [vi("x", [3, 7])], [vi("y", [3, 7])], inits, opset=17)
    model, stats = run_pipeline(proto, "fuse-softmax,eliminate-dead-code", {"x": rand((3, 7)) * 4})
    assert ops(model) == ["Softmax"] and stats["fused"] == 1


def test_fuse_gelu_tanh_form_upgrades_the_opset():
    nodes = [helper.make_node("Mul", ["c", "x"], ["a"], name="m0"),
             helper.make_node("Mul", ["x", "a"], ["b"], name="m1"),
             helper.make_node("Mul", ["x", "b"], ["cube"], name="m2"),
             helper.make_node("Add", ["x", "cube"], ["inner"], name="add"),
             helper.make_node("Mul", ["k", "inner"], ["scaled"], name="m3"),
             helper.make_node("Tanh", ["scaled"], ["t"], name="tanh"),
             helper.make_node("Add", ["one", "t"], ["t1"], name="add1"),
             helper.make_node("Mul", ["half", "t1"], ["h"], name="m4"),
             helper.make_node("Mul", ["x", "h"], ["y"], name="m5")]
    inits = [init("c", np.float32(0.044715)), init("k", np.float32(np.sqrt(2 / np.pi))),
             init("one", np.float32(1)), init("half", np.float32(0.5))]
    proto = make_proto(nodes, [vi("x", [4, 6])], [vi("y", [4, 6])], inits, opset=17)
    model, stats = run_pipeline(proto, "fuse-gelu", {"x": rand((4, 6)) * 3})
    assert ops(model) == ["Gelu"] and stats["fused"] == 1 and model.opset >= 20


def test_magika_prepares_into_fused_ops():
    from presso.backends.target import get_target
    from presso.tools import zoo

    x, _ = zoo.magika_dataset(2)
    model = load(zoo.magika_model())
    PassManager.parse(get_target("qnn-htp").prepare, verify=True, rtol=1e-3, atol=1e-4).run(model, data={"bytes": x})
    counts = {op: sum(n.op == op for n in model.graph.nodes) for op in
              ("LayerNormalization", "Gelu", "Softmax", "Gather", "Expand", "Equal", "Shape", "Max", "Sqrt")}
    assert counts == {"LayerNormalization": 2, "Gelu": 2, "Softmax": 1, "Gather": 1, "Expand": 0, "Equal": 0,
                      "Shape": 0, "Max": 0, "Sqrt": 0}
