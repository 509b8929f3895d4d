"""A layered drawing of a model's graph, Q/DQ pairs collapsed, for the report's graph view.

Each computing node (and each graph input and output) is a point: its column is its depth
(the longest path from an input, so every edge points right), its row a lane that a chain of
nodes keeps and that a branch leaves (see ``_lanes``), so residual and gating paths show.
Edges run through QuantizeLinear/DequantizeLinear nodes as if they were not there: the view
shows the float model's structure, coloured by how each node was compressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from ..ir import Model
from .precision import QDQ_OPS


@dataclass
class GraphLayout:
    """Points (name, op, kind, x, y) and edges (index pairs) of the drawing."""

    names: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # "node", "input", "output"
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)


def layered_layout(model: Model, names: dict[int, str] | None = None) -> GraphLayout:
    """The drawing of ``model`` (nodes in graph order, which is topological); nodes are named
    by ``names[id(node)]`` when given."""
    layout = GraphLayout()
    index: dict[tuple[str, int], int] = {}  # ("node" | "input" | "output", id) → point
    preds: list[list[int]] = []

    def add(key: tuple[str, int], name: str, op: str, kind: str) -> int:
        index[key] = len(layout.names)
        layout.names.append(name)
        layout.ops.append(op)
        layout.kinds.append(kind)
        preds.append([])
        return index[key]

    for tensor in model.graph.inputs:
        add(("input", id(tensor)), tensor.name, "input", "input")
    for node in model.graph.nodes:
        if node.op in QDQ_OPS or node.op == "Constant":
            continue
        point = add(("node", id(node)), names[id(node)] if names else node.name, node.op, "node")
        for tensor in node.inputs:
            source = _source(tensor)
            if source is not None and source in index and index[source] not in preds[point]:
                preds[point].append(index[source])
    for tensor in model.graph.outputs:
        point = add(("output", id(tensor)), tensor.name, "output", "output")
        source = _source(tensor)
        if source is not None and source in index:
            preds[point].append(index[source])

    depth = [0] * len(layout.names)
    for point, sources in enumerate(preds):  # points were added in topological order
        depth[point] = max((depth[s] + 1 for s in sources), default=0)
    lane = _lanes(depth, preds)
    layout.x = [float(d) for d in depth]
    layout.y = [-float(r) for r in lane]  # lane 0 in the middle, the first branch above it
    layout.edges = [(s, p) for p, sources in enumerate(preds) for s in sources]
    return layout


def _lanes(depth: list[int], preds: list[list[int]]) -> list[int]:
    """A row ("lane") per point, like ``git log --graph``: a point continues the lane of its first
    predecessor whose lane no other successor has taken yet, else opens the free lane nearest
    the middle (0, 1, -1, 2, …). A lane stays held from a point until its successor takes it, so
    a skip connection (a residual Add, a squeeze-excitation Mul) is drawn beside the chain it
    skips instead of on top of it."""
    successors: list[list[int]] = [[] for _ in depth]
    for point, sources in enumerate(preds):
        for source in sources:
            successors[source].append(point)
    lane = [0] * len(depth)
    held: dict[int, int] = {}  # lane → the point whose successor will continue it
    last_x: dict[int, int] = {}  # lane → the rightmost column drawn in it
    for point in sorted(range(len(depth)), key=lambda p: (depth[p], p)):
        chosen = None
        for source in preds[point]:
            if held.get(lane[source]) == source:
                chosen = lane[source]
                break
        if chosen is None:
            candidate = 0
            step = 0
            while candidate in held or last_x.get(candidate, -1) >= depth[point]:
                step += 1
                candidate = (step + 1) // 2 if step % 2 else -(step // 2)
            chosen = candidate
        lane[point] = chosen
        last_x[chosen] = depth[point]
        if successors[point]:
            held[chosen] = point
        else:
            held.pop(chosen, None)
    return lane


def _source(tensor: gs.Tensor) -> tuple[str, int] | None:
    """The key of what computes ``tensor``, looking through Q/DQ nodes: a node or a graph input."""
    seen = 0
    while tensor.inputs and seen < 64:
        node = tensor.inputs[0]
        if node.op not in QDQ_OPS:
            return None if node.op == "Constant" else ("node", id(node))
        if not node.inputs:
            return None
        tensor = node.inputs[0]
        seen += 1
    if isinstance(tensor, gs.Constant):
        return None
    return ("input", id(tensor))  # a graph input (or a dangling tensor, which matches no point)
