"""Use-def helpers keep the graph valid: names unique, graph outputs keep their names."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from _graphs import assert_close, make_proto, rand, reference, vi
from onnx import helper

from presso.ir import evaluate, load
from presso.ir.edit import (
    add_initializer,
    add_node,
    consumers,
    insert_node_on_edge,
    producer,
    remove_node,
    replace_all_uses,
    unique_name,
)


def _chain():
    # x -> Relu(a) -> Neg(b) -> y, and a also feeds the second output z through Abs
    return make_proto([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                       helper.make_node("Neg", ["a"], ["y"], name="neg"),
                       helper.make_node("Abs", ["a"], ["z"], name="abs")],
                      [vi("x", [2, 3])], [vi("y", [2, 3]), vi("z", [2, 3])])


def _valid(model):
    onnx.checker.check_model(model.to_proto(), full_check=True)


def test_unique_name_avoids_nodes_tensors_and_reserved():
    model = load(_chain())
    assert unique_name(model, "fresh") == "fresh"
    assert unique_name(model, "fresh") == "fresh_1"  # reserved by the first call
    assert unique_name(model, "relu") == "relu_1"  # a node name
    assert unique_name(model, "a") == "a_1"  # a tensor name
    # a tensor wired in by hand (not through the helpers) is seen too
    node = model.node("neg")
    node.outputs[0].name = "hand_made"
    assert unique_name(model, "hand_made") == "hand_made_1"


def test_insert_node_on_edge_to_all_consumers_and_graph_output():
    proto = _chain()
    model = load(proto)
    a = model.tensor("a")
    node = insert_node_on_edge(model, a, "Sigmoid")
    assert producer(node.outputs[0]) is node and consumers(a) == [node]
    y = model.graph.outputs[0]
    node2 = insert_node_on_edge(model, y, "Abs", name="post")
    assert model.output_names() == ["y", "z"]  # the interface keeps its names
    assert model.graph.outputs[0] is node2.outputs[0]
    _valid(model)
    x = {"x": rand((2, 3))}
    sig = 1 / (1 + np.exp(-np.maximum(x["x"], 0)))
    out = evaluate(model, x)
    np.testing.assert_allclose(out["y"], np.abs(-sig), rtol=1e-6)
    np.testing.assert_allclose(out["z"], np.abs(sig), rtol=1e-6)


def test_insert_node_only_for_some_consumers():
    model = load(_chain())
    a = model.tensor("a")
    insert_node_on_edge(model, a, "Sigmoid", only_for=[model.node("abs")])
    _valid(model)
    x = {"x": rand((2, 3))}
    out = evaluate(model, x)
    np.testing.assert_allclose(out["y"], -np.maximum(x["x"], 0), rtol=1e-6)
    np.testing.assert_allclose(out["z"], 1 / (1 + np.exp(-np.maximum(x["x"], 0))), rtol=1e-6)


def test_remove_node_reconnects_and_keeps_output_names():
    proto = make_proto([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                        helper.make_node("Identity", ["a"], ["y"], name="id")],
                       [vi("x", [4])], [vi("y", [4])])
    model = load(proto)
    assert remove_node(model, model.node("id"))
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    assert model.output_names() == ["y"]
    _valid(model)
    x = {"x": rand((4,))}
    assert_close(reference(proto, x), evaluate(model, x), rtol=0, atol=0)


def test_remove_node_refuses_input_to_output():
    proto = make_proto([helper.make_node("Identity", ["x"], ["y"], name="id")], [vi("x", [4])], [vi("y", [4])])
    model = load(proto)
    assert not remove_node(model, model.node("id"))
    assert len(model.graph.nodes) == 1


def test_replace_all_uses_and_add_node_add_initializer():
    model = load(_chain())
    a = model.tensor("a")
    c = add_initializer(model, "a", np.full((2, 3), 2.0, np.float32))
    assert c.name == "a_1"
    add = add_node(model, "Add", [model.graph.inputs[0], c], name="plus2", dtype=np.float32, shape=[2, 3])
    replace_all_uses(model, a, add.outputs[0])
    model.graph.cleanup().toposort()
    _valid(model)
    x = {"x": rand((2, 3))}
    out = evaluate(model, x)
    np.testing.assert_allclose(out["y"], -(x["x"] + 2), rtol=1e-6)
    assert [n.op for n in model.graph.nodes].count("Relu") == 0


def test_replace_graph_output_renames_the_new_tensor():
    model = load(_chain())
    y = model.graph.outputs[0]
    new = add_node(model, "Exp", [model.tensor("a")], name="exp", dtype=np.float32, shape=[2, 3]).outputs[0]
    replace_all_uses(model, y, new)
    assert model.output_names() == ["y", "z"] and new.name == "y" and y.name != "y"
    model.graph.cleanup().toposort()
    _valid(model)


def test_unique_name_is_linear_in_practice():
    """Many names on a big graph: the walk stays cheap (regression guard for O(graph²) passes)."""
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(2000)]
    model = load(make_proto(nodes, [vi("t0", [1])], [vi("t2000", [1])]))
    names = {unique_name(model, "t5") for _ in range(300)}
    assert len(names) == 300 and "t5" not in names
    gs_names = set(model.graph.tensors())
    assert not names & gs_names
    assert isinstance(add_initializer(model, "w", np.zeros(1, np.float32)), gs.Constant)


def test_batch_names_walks_once_and_stays_unique():
    from presso.ir.edit import batch_names

    model = load(_chain())
    with batch_names(model):
        first = [unique_name(model, "a") for _ in range(3)]
        c = add_initializer(model, "relu", np.zeros(1, np.float32))
        with batch_names(model):  # nesting reuses the outer cache
            second = unique_name(model, "a")
    assert first == ["a_1", "a_2", "a_3"] and second == "a_4" and c.name == "relu_1"
    assert model._name_cache is None  # outside a block, every call walks the graph again
    assert unique_name(model, "a") == "a_5"
