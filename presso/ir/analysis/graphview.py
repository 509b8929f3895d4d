"""Dependency questions over the graph: a topological order of its nodes, and a networkx view
for ancestry and dominance questions.

Reads the graph only; nothing here changes it.
"""

from __future__ import annotations

from collections import deque

import networkx as nx
import onnx_graphsurgeon as gs

from ..errors import PassError
from ..model import Model


def topological_nodes(model: Model) -> list[gs.Node]:
    """The graph's nodes in an order where every producer comes before its consumers.

    Kahn's algorithm, first in first out, over ``model.graph.nodes`` (the list is not
    reordered; graphsurgeon's ``graph.toposort()`` does that in place, in another order).
    Nodes are told apart by identity, so empty or repeated names do not matter. Not cached:
    passes call it on graphs they are editing. A cycle raises :class:`PassError` naming a
    node on it.
    """
    nodes = model.graph.nodes
    producer = {id(t): i for i, node in enumerate(nodes) for t in node.outputs}
    pending = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps = {producer[id(t)] for t in node.inputs if id(t) in producer}
        pending[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = deque(i for i, count in enumerate(pending) if count == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i, count in enumerate(pending) if count > 0)
        raise PassError("the graph has a cycle", where=f"node '{stuck.name}' ({stuck.op})",
                        hint="ONNX graphs must be acyclic: run onnx.checker on the input model, "
                             "or report the pass that produced this graph")
    return order


def node_graph(model: Model) -> nx.MultiDiGraph:
    """Nodes keyed by name; an edge per tensor from its producer to each consumer.

    Edge attribute ``tensor`` holds the tensor name. Cached until the graph changes.
    """

    def compute() -> nx.MultiDiGraph:
        g = nx.MultiDiGraph()
        for node in model.graph.nodes:
            g.add_node(node.name, op=node.op, node=node)
        for node in model.graph.nodes:
            for tensor in node.outputs:
                for consumer in tensor.outputs:
                    g.add_edge(node.name, consumer.name, tensor=tensor.name)
        return g

    return model.analysis("node_graph", compute)


def producers_of(model: Model, tensor: gs.Tensor) -> set[str]:
    """Names of every node that ``tensor`` depends on (transitively)."""
    if not tensor.inputs:
        return set()
    start = tensor.inputs[0].name
    return {start} | nx.ancestors(node_graph(model), start)
