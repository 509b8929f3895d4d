"""fold-constants: constant subgraphs, ConstantOfShape, Shape-derived subgraphs; never Q/DQ."""

from __future__ import annotations

import numpy as np
from _graphs import init, make_proto, ops, rand, run_pipeline, vi
from onnx import TensorProto, helper

from presso.ir import load
from presso.passes import PassManager


def test_constant_arithmetic_and_constant_of_shape():
    # w = ConstantOfShape([4, 3], 0.5) * Constant(2) ; y = x @ w + b
    nodes = [
        helper.make_node("ConstantOfShape", ["wshape"], ["w0"], name="cos",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Constant", [], ["two"], name="c2", value=helper.make_tensor("t", TensorProto.FLOAT, [], [2.0])),
        helper.make_node("Mul", ["w0", "two"], ["w"], name="scale"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["y"], name="add"),
    ]
    proto = make_proto(nodes, [vi("x", [2, 4])], [vi("y", [2, 3])],
                       [init("wshape", np.array([4, 3], np.int64)), init("b", rand((3,)))])
    model, stats = run_pipeline(proto, "fold-constants", {"x": rand((2, 4))})
    assert ops(model) == ["MatMul", "Add"] and stats["nodes_folded"] == 3
    np.testing.assert_array_equal(model.node("mm").inputs[1].values, np.ones((4, 3), np.float32))


def test_shape_derived_subgraph_folds_when_static():
    # Reshape(x, Concat(Shape(x)[0:1], [-1])) : a flatten whose target comes from Shape
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"], name="slice"),
        helper.make_node("Concat", ["n", "minus1"], ["target"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [init("zero", np.array([0], np.int64)), init("one", np.array([1], np.int64)),
             init("minus1", np.array([-1], np.int64))]
    static = make_proto(nodes, [vi("x", [2, 3, 4])], [vi("y", [2, 12])], inits)
    model, _ = run_pipeline(static, "fold-constants", {"x": rand((2, 3, 4))})
    assert ops(model) == ["Reshape"]
    np.testing.assert_array_equal(model.node("reshape").inputs[1].values, [2, -1])

    dynamic = make_proto(nodes, [vi("x", ["n", 3, 4])], [vi("y", ["n", 12])], inits)
    model, _ = run_pipeline(dynamic, "fold-constants", {"x": rand((5, 3, 4))})
    assert "Shape" in ops(model)  # the batch size is not known: the Shape must stay

    model, _ = run_pipeline(static, "fold-constants{fold_shapes=false}", {"x": rand((2, 3, 4))})
    assert "Shape" in ops(model)


def test_never_folds_quantize_dequantize():
    # int8 weight → DequantizeLinear → MatMul: folding the DQ would store float weights
    w_q = np.random.default_rng(0).integers(-127, 127, (4, 3)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"], name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    proto = make_proto(nodes, [vi("x", [1, 4])], [vi("y", [1, 3])],
                       [init("wq", w_q), init("scale", np.float32(0.05)), init("zp", np.int8(0))])
    model, _ = run_pipeline(proto, "fold-constants", {"x": rand((1, 4))})
    assert ops(model) == ["DequantizeLinear", "MatMul"]
    assert model.node("dq").inputs[0].values.dtype == np.int8


def test_size_limit_keeps_large_results_unfolded():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos",
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("Add", ["x", "big"], ["y"], name="add")]
    proto = make_proto(nodes, [vi("x", [512, 1024])], [vi("y", [512, 1024])],
                       [init("shape", np.array([512, 1024], np.int64))])
    model = load(proto)
    PassManager.parse("fold-constants{max_size_mb=1}").run(model)
    assert ops(model) == ["ConstantOfShape", "Add"]  # 2 MiB result > 1 MiB limit
    PassManager.parse("fold-constants").run(model)
    assert ops(model) == ["Add"]


def test_ranged_shape_folds_to_its_slice_not_the_whole_shape():
    # Reshape(x, Concat(Shape(x, start=0, end=2), [-1])): graphsurgeon alone folds the whole shape
    nodes = [
        helper.make_node("Shape", ["x"], ["lead"], name="shape", start=0, end=2),
        helper.make_node("Concat", ["lead", "minus1"], ["target"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    proto = make_proto(nodes, [vi("x", [2, 3, 4, 5])], [vi("y", [2, 3, 20])],
                       [init("minus1", np.array([-1], np.int64))])
    model, stats = run_pipeline(proto, "fold-constants", {"x": rand((2, 3, 4, 5))})
    np.testing.assert_array_equal(model.node("reshape").inputs[1].values, [2, 3, -1])


def test_ranged_shape_of_a_dynamic_input_stays_a_single_node():
    nodes = [helper.make_node("Shape", ["x"], ["tail"], name="shape", start=1),
             helper.make_node("Cast", ["tail"], ["y"], name="cast", to=TensorProto.FLOAT)]
    proto = make_proto(nodes, [vi("x", ["N", "M", 4])], [vi("y", [2])])
    model, _ = run_pipeline(proto, "fold-constants", {"x": rand((2, 3, 4))})
    assert ops(model) == ["Shape", "Cast"] and model.node("shape").attrs["start"] == 1


def test_constant_if_condition_is_folded_inside_bodies_without_breaking_them():
    # the branches read outer constants; graphsurgeon's branch inlining used to lose tensors
    then_branch = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"], name="then_mul")],
                                    "then", [], [vi("t", [2, 3])])
    else_branch = helper.make_graph([helper.make_node("Add", ["two", "two"], ["four"], name="const_add"),
                                     helper.make_node("Mul", ["x", "four"], ["e"], name="else_mul")],
                                    "else", [], [vi("e", [2, 3])])
    nodes = [helper.make_node("Constant", [], ["c"], name="cond", value=helper.make_tensor("c", TensorProto.BOOL, [], [0])),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    proto = make_proto(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("two", np.array(2.0, np.float32))])
    model, stats = run_pipeline(proto, "fold-constants", {"x": rand((2, 3))})
    assert stats["nodes_folded"] >= 1  # the constant Add inside the else branch
    else_ops = [n.op for n in model.node("branch").attrs["else_branch"].nodes]
    assert else_ops == ["Mul"]
