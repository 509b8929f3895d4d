"""A networkx view of the graph for dependency and dominance questions."""

from __future__ import annotations

import networkx as nx
import onnx_graphsurgeon as gs

from ..model import Model


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
