"""Dependency views of the graph: the topological order, and the networkx view (one node per
op, one edge per tensor use)."""

from __future__ import annotations

import random

import networkx as nx
import onnx_graphsurgeon as gs
import pytest
from _graphs import make_proto, vi
from onnx import helper

from presso.ir import PassError, load, node_graph
from presso.ir.analysis.graphview import producers_of, topological_nodes
from presso.tools import zoo


def test_node_graph_edges_and_ancestors():
    # unnamed nodes get unique names on load, so none collapse into one vertex
    proto = make_proto([helper.make_node("Relu", ["x"], ["a"]),
                        helper.make_node("Neg", ["a"], ["b"]),
                        helper.make_node("Add", ["a", "b"], ["y"])],
                       [vi("x", [2])], [vi("y", [2])])
    model = load(proto)
    g = node_graph(model)
    relu, neg, add = (n.name for n in model.graph.nodes)
    assert g.number_of_nodes() == 3
    assert sorted((u, v, d["tensor"]) for u, v, d in g.edges(data=True)) == sorted(
        [(relu, neg, "a"), (relu, add, "a"), (neg, add, "b")])
    assert nx.is_directed_acyclic_graph(g)
    assert producers_of(model, model.tensor("y")) == {relu, neg, add}
    assert producers_of(model, model.tensor("x")) == set()
    assert node_graph(model) is g  # cached
    model.invalidate()
    assert node_graph(model) is not g


def _diamond():
    """x → Relu → {Neg, Abs} → Add, and x → Exp; Sum of both."""
    return load(make_proto([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                            helper.make_node("Neg", ["a"], ["b"], name="neg"),
                            helper.make_node("Abs", ["a"], ["c"], name="abs"),
                            helper.make_node("Add", ["b", "c"], ["d"], name="add"),
                            helper.make_node("Exp", ["x"], ["e"], name="exp"),
                            helper.make_node("Sum", ["d", "e"], ["y"], name="sum")],
                           [vi("x", [2])], [vi("y", [2])]))


def _is_topological(order: list[gs.Node], model) -> bool:
    position = {id(n): i for i, n in enumerate(order)}
    return len(order) == len(model.graph.nodes) and all(
        position[id(p)] < position[id(n)] for n in order for t in n.inputs for p in t.inputs)


def test_topological_nodes_first_in_first_out_and_list_untouched():
    model = _diamond()
    nodes = model.graph.nodes
    nodes.reverse()  # a graph a pass left unsorted
    before = list(nodes)
    order = topological_nodes(model)
    # Kahn, first in first out over the list order: exp and relu are ready first (exp is
    # earlier in the reversed list); abs comes before neg for the same reason
    assert [n.name for n in order] == ["exp", "relu", "abs", "neg", "add", "sum"]
    assert [id(n) for n in nodes] == [id(n) for n in before]  # reads the graph, never reorders it
    assert _is_topological(order, model)


@pytest.mark.parametrize("name", ["densenet121", "inception_v2"])
def test_topological_nodes_on_real_graphs_in_any_list_order(name):
    model = load(zoo.light_model(name))
    for seed in range(3):
        random.Random(seed).shuffle(model.graph.nodes)
        assert _is_topological(topological_nodes(model), model)


def test_topological_nodes_names_a_node_on_a_cycle():
    model = _diamond()
    relu = next(n for n in model.graph.nodes if n.name == "relu")
    add = next(n for n in model.graph.nodes if n.name == "add")
    relu.inputs[0] = add.outputs[0]  # relu now reads d, which depends on relu
    with pytest.raises(PassError, match=r"cycle \(at node '(relu|neg|abs|add)'"):
        topological_nodes(model)
