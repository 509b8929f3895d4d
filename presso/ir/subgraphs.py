"""Walking the bodies of control-flow nodes (``If``, ``Loop``, ``Scan``, ``SequenceMap``).

graphsurgeon imports a body as a ``gs.Graph`` held in a node attribute. A body reads tensors
of the graphs around it by name: graphsurgeon links those reads to the *same* tensor objects,
so rewiring an outer tensor is seen inside bodies too, but a pass that walks only
``model.graph.nodes`` sees neither the body's nodes nor its reads. These helpers make both
visible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class Body:
    """One body graph, the node that owns it and the attribute it sits in."""

    graph: gs.Graph
    owner: gs.Node
    attribute: str

    @property
    def label(self) -> str:
        return f"{self.attribute} of {self.owner.op} node '{self.owner.name}'"


def node_bodies(node: gs.Node) -> Iterator[Body]:
    """The bodies held directly in ``node``'s attributes."""
    for key, value in node.attrs.items():
        if isinstance(value, gs.Graph):
            yield Body(value, node, key)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, gs.Graph):
                    yield Body(item, node, f"{key}[{index}]")


def bodies(graph: gs.Graph) -> Iterator[Body]:
    """Every body nested anywhere in ``graph``, outer bodies before the bodies inside them."""
    for node in graph.nodes:
        for body in node_bodies(node):
            yield body
            yield from bodies(body.graph)


def has_bodies(graph: gs.Graph) -> bool:
    return any(True for node in graph.nodes for _ in node_bodies(node))


def outer_reads(body: gs.Graph) -> set[str]:
    """Names that ``body`` (or a body nested in it) reads without producing them: values of
    enclosing graphs, and constants (graphsurgeon does not tell an outer weight from the
    body's own initializer)."""
    defined = {t.name for t in body.inputs}
    for node in body.nodes:
        defined.update(t.name for t in node.outputs)
    read: set[str] = set()
    for node in body.nodes:
        read.update(t.name for t in node.inputs if t.name)
        for inner in node_bodies(node):
            read |= outer_reads(inner.graph)
    read.update(t.name for t in body.outputs)
    return read - defined


def nodes_reading_in_bodies(graph: gs.Graph) -> dict[str, gs.Node]:
    """Tensor names of ``graph`` that its bodies read, each with the top-level node holding the body."""
    found: dict[str, gs.Node] = {}
    for node in graph.nodes:
        for body in node_bodies(node):
            for name in outer_reads(body.graph):
                found.setdefault(name, node)
    return found


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every body nested in it, in a proto (before import or after export)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from proto_graphs(attr.g)
            for sub in attr.graphs:
                yield from proto_graphs(sub)
