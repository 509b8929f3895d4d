"""The networkx view: one node per op, one edge per tensor use."""

from __future__ import annotations

import networkx as nx
from _graphs import make_proto, vi
from onnx import helper

from presso.ir import load, node_graph
from presso.ir.analysis.graphview import producers_of


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
