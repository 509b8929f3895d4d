"""eliminate-dead-code, remove-identity, constants-to-initializers, infer-shapes, upgrade-opset."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import assert_close, init, make_proto, ops, rand, reference, run_pipeline, vi
from onnx import TensorProto, helper

from presso.ir import PassError, evaluate, load
from presso.passes import PassManager


def test_eliminate_dead_code():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Mul", ["x", "unused_w"], ["dead1"], name="d1"),
             helper.make_node("Neg", ["dead1"], ["dead2"], name="d2"),
             helper.make_node("Neg", ["a"], ["y"], name="n")]
    proto = make_proto(nodes, [vi("x", [3]), vi("spare", [3])], [vi("y", [3])], [init("unused_w", rand((3,)))])
    model, stats = run_pipeline(proto, "eliminate-dead-code", {"x": rand((3,)), "spare": rand((3,))})
    assert ops(model) == ["Relu", "Neg"]
    assert stats == {"nodes_removed": 2, "initializers_removed": 1, "inputs_removed": 0}
    assert model.input_names() == ["x", "spare"]  # the interface stays by default
    PassManager.parse("eliminate-dead-code{remove_unused_inputs=true}").run(model)
    assert model.input_names() == ["x"]


def test_remove_identity_and_dropout():
    nodes = [helper.make_node("Identity", ["x"], ["a"], name="i1"),
             helper.make_node("Dropout", ["a", "ratio"], ["b"], name="drop"),
             helper.make_node("Relu", ["b"], ["c"], name="r"),
             helper.make_node("Identity", ["c"], ["y"], name="i2")]
    proto = make_proto(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("ratio", np.float32(0.5))])
    model, stats = run_pipeline(proto, "remove-identity", {"x": rand((2, 3))})
    assert ops(model) == ["Relu"] and model.output_names() == ["y"]
    assert stats == {"identity_removed": 2, "dropout_removed": 1, "removed_in_bodies": 0}


def test_dropout_in_training_mode_or_with_used_mask_stays():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"], name="drop")]
    proto = make_proto(nodes, [vi("x", [2, 3]), vi("train", [], np.bool_)], [vi("y", [2, 3])],
                       [init("ratio", np.float32(0.5))])
    model = load(proto)
    PassManager.parse("remove-identity").run(model)
    assert ops(model) == ["Dropout"]
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Dropout", ["a"], ["y", "mask"], name="drop")]
    proto = make_proto(nodes, [vi("x", [2, 3])], [vi("y", [2, 3]), vi("mask", [2, 3], np.bool_)])
    model, stats = run_pipeline(proto, "remove-identity", {"x": rand((2, 3))})
    assert "Dropout" in ops(model) and stats["dropout_removed"] == 0


def test_identity_from_graph_input_to_graph_output_stays():
    proto = make_proto([helper.make_node("Identity", ["x"], ["y"], name="i")], [vi("x", [3])], [vi("y", [3])])
    model, stats = run_pipeline(proto, "remove-identity", {"x": rand((3,))})
    assert ops(model) == ["Identity"] and model.input_names() == ["x"] and model.output_names() == ["y"]
    # a constant straight to an output: the Identity is what makes it an output
    proto = make_proto([helper.make_node("Identity", ["c"], ["y"], name="i"),
                        helper.make_node("Relu", ["x"], ["z"], name="r")],
                       [vi("x", [3])], [vi("y", [3]), vi("z", [3])], [init("c", rand((3,)))])
    model, stats = run_pipeline(proto, "remove-identity", {"x": rand((3,))})
    assert ops(model) == ["Identity", "Relu"]


def test_constants_to_initializers():
    nodes = [helper.make_node("Constant", [], ["w"], name="cw", value=helper.make_tensor(
                 "t", TensorProto.FLOAT, [3], [1.0, -2.0, 3.0])),
             helper.make_node("Constant", [], ["k"], name="ck", value_ints=[1, 3]),
             helper.make_node("Constant", [], ["out_c"], name="co", value_float=4.0),
             helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
             helper.make_node("Reshape", ["m", "k"], ["y"], name="reshape")]
    proto = make_proto(nodes, [vi("x", [3])], [vi("y", [1, 3]), vi("out_c", [])])
    model, stats = run_pipeline(proto, "constants-to-initializers", {"x": rand((3,))})
    assert stats["converted"] == 2
    assert ops(model) == ["Constant", "Mul", "Reshape"]  # the one that is a graph output stays
    np.testing.assert_array_equal(model.node("mul").inputs[1].values, [1.0, -2.0, 3.0])
    assert "w" in model.initializers()


def test_infer_shapes_annotates_and_fixes_batch():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="r")]
    proto = make_proto(nodes, [vi("x", ["batch", 4])], [vi("y", ["batch", 3])], [init("w", rand((4, 3)))])
    model, stats = run_pipeline(proto, "infer-shapes", {"x": rand((2, 4))})
    assert stats["annotated"] >= 1 and model.tensor("h").shape == ["batch", 3]
    model = load(proto)
    PassManager.parse("infer-shapes{batch=8}").run(model)
    assert list(model.graph.inputs[0].shape) == [8, 4] and model.tensor("h").shape == [8, 3]


def test_upgrade_opset():
    # opset 9 Upsample-free graph with BN (spatial attr era) and Dropout
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Dropout", ["bn"], ["d"], name="drop"),
             helper.make_node("Relu", ["d"], ["y"], name="relu")]
    rng = np.random.default_rng(0)
    inits = [init("w", rand((3, 2, 1, 1))), init("g", rng.uniform(0.5, 1, 3).astype(np.float32)),
             init("b", rand((3,))), init("m", rand((3,))), init("v", rng.uniform(0.5, 1, 3).astype(np.float32))]
    proto = make_proto(nodes, [vi("x", [1, 2, 4, 4])], [vi("y", [1, 3, 4, 4])], inits, opset=9, ir_version=4)
    model, stats = run_pipeline(proto, "upgrade-opset{version=13}", {"x": rand((1, 2, 4, 4))})
    assert model.opset == 13 and stats == {"opset_before": 9, "opset": 13}
    model.annotations.history.clear()
    _, stats = run_pipeline(model.to_proto(), "upgrade-opset{version=13}", {"x": rand((1, 2, 4, 4))})
    assert stats == {"opset": 13}  # already there: nothing to do, never downgrades
    with pytest.raises(PassError, match="knows up to"):
        PassManager.parse("upgrade-opset{version=99}").run(load(proto))


def test_infer_shapes_batch_on_an_unnamed_dynamic_batch():
    # PP-OCR cls declares its input as [-1, 3, ?, ?]
    from presso.tools import zoo

    model = load(zoo.ppocr_cls_model())
    PassManager.parse("infer-shapes{batch=2}").run(model)
    assert model.graph.inputs[0].shape[:2] == [2, 3] and isinstance(model.graph.inputs[0].shape[2], str)


def test_remove_identity_inside_a_body_keeps_the_identity_that_returns_an_outer_value():
    # then: Identity(x) → t1 → Relu → t (internal, removable); else: Identity(x) → e is the
    # branch's output, read from the outer graph, and must stay
    then_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["t1"], name="inner_id"),
                                     helper.make_node("Relu", ["t1"], ["t"], name="inner_relu")],
                                    "then", [], [vi("t", [2, 3])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="return_x")],
                                    "else", [], [vi("e", [2, 3])])
    proto = make_proto([helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch,
                                         else_branch=else_branch)],
                       [vi("x", [2, 3]), vi("c", [], bool)], [vi("y", [2, 3])])
    feeds = [{"x": rand((2, 3)), "c": np.array(flag)} for flag in (True, False)]
    model = load(proto)
    # verify=True checks both branches against the model before the pass; a scalar input has no
    # sample axis, so the feeds go to the manager as they are
    report = PassManager.parse("remove-identity", verify=True).run(model, sample_feeds=feeds)
    assert report.records[0].result.stats["removed_in_bodies"] == 1
    for f in feeds:
        assert_close(reference(proto, f), evaluate(model, f))
    assert [n.op for n in model.node("branch").attrs["then_branch"].nodes] == ["Relu"]
    assert [n.op for n in model.node("branch").attrs["else_branch"].nodes] == ["Identity"]
