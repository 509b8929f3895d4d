"""Structural invariants of the IR graph, checked after every pass without exporting it.

The pass manager calls :func:`structural_problem` after each pass that changed the model, so a
pass that breaks the graph is named at once instead of surfacing later as an ``onnx.checker``
or onnxruntime error far from its cause. The invariants, in the main graph and in every
If/Loop/Scan body:

- every node input is defined before the node reads it: a graph input, a constant, an output
  of an earlier node of the same graph, or a value of an enclosing graph defined before the
  node that holds the body;
- every tensor has one producer, and graph outputs are defined;
- node names are unique within a graph.

Reads the graph only. Cost: one walk over the nodes.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .subgraphs import node_bodies


def structural_problem(graph: gs.Graph) -> tuple[str, str] | None:
    """The first broken invariant as ``(what, where)``, or None when the graph is sound."""
    return _check(graph, outer=frozenset(), scope="main graph")


def _check(graph: gs.Graph, *, outer: frozenset[str], scope: str) -> tuple[str, str] | None:
    defined = set(outer)
    defined.update(t.name for t in graph.inputs)
    produced: dict[str, str] = {}
    names: set[str] = set()
    for node in graph.nodes:
        where = f"{node.op} node '{node.name}' in {scope}"
        if node.name and node.name in names:
            return f"node name '{node.name}' is used twice", where
        names.add(node.name)
        for tensor in node.inputs:
            if tensor.name and not isinstance(tensor, gs.Constant) and tensor.name not in defined:
                if tensor.name in _later_outputs(graph, node):
                    return (f"reads '{tensor.name}' before the node that produces it "
                            "(nodes out of topological order)"), where
                return f"reads '{tensor.name}', which nothing defines", where
        for body in node_bodies(node):
            problem = _check(body.graph, outer=frozenset(defined),
                             scope=f"{body.attribute} of {node.op} node '{node.name}' ({scope})")
            if problem:
                return problem
        for tensor in node.outputs:
            if not tensor.name:
                continue
            if tensor.name in produced:
                return f"tensor '{tensor.name}' is also produced by {produced[tensor.name]}", where
            if tensor.name in defined and tensor.name not in outer:
                return f"tensor '{tensor.name}' is produced by the node and also a graph input", where
            produced[tensor.name] = f"node '{node.name}'"
            defined.add(tensor.name)
    for tensor in graph.outputs:
        if not isinstance(tensor, gs.Constant) and tensor.name not in defined:
            return f"graph output '{tensor.name}' is not produced by any node or input", scope
    return None


def _later_outputs(graph: gs.Graph, node: gs.Node) -> set[str]:
    index = next(i for i, n in enumerate(graph.nodes) if n is node)
    return {t.name for n in graph.nodes[index + 1:] for t in n.outputs}
