"""`fold-constants`: evaluate every subgraph whose inputs are all constant."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from ...ir import Model
from ...ir.analysis.shapes import apply_inferred_shapes
from ...ir.edit import unique_name
from ...ir.evaluate import ort_logs
from ...ir.subgraphs import bodies
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass

# Folding these would undo quantization: the integer weight would become a float constant.
_NEVER_FOLD = {"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"}
# Their outputs are sequences or optionals, which cannot be stored as a constant tensor.
_NON_TENSOR_OPS = {
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SplitToSequence",
    "SequenceMap", "Optional", "OptionalGetElement", "OptionalHasElement",
}
# graphsurgeon's own size limit would be "none"; it then measures every folded value with
# `.nbytes`, which a folded sequence (a Python list) does not have.
_NO_LIMIT = 2**62


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Replace constant subgraphs by their values (onnx-graphsurgeon's folder, run by onnxruntime).

    Folds ``Constant`` and ``ConstantOfShape`` nodes, arithmetic on initializers, and, when
    shapes are static (``fold_shapes=true``, after shape inference), ``Shape``-derived
    subgraphs such as the targets of Reshape. Q/DQ nodes are never folded, so quantized
    weights stay integers. ``max_size_mb`` skips results larger than that (e.g. an Expand that
    would store a huge tensor).

    Bodies of If/Loop/Scan are folded too, constants of the outer graph included, but without
    shape folding (a loop-carried tensor may change shape from one iteration to the next) and
    without inlining the branch of an If whose condition is constant (graphsurgeon's inlining
    loses tensors that later branch nodes read). Nodes that make sequences or optionals stay.
    Preserves semantics.
    """

    preserves_semantics = True
    fold_shapes: bool = True
    max_size_mb: float | None = None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        before_nodes = _count_nodes(model.graph)
        if self.fold_shapes:
            apply_inferred_shapes(model)
            ranged = _split_ranged_shapes(model)
        limit = int(self.max_size_mb * 2**20) if self.max_size_mb else _NO_LIMIT
        severity = G_LOGGER.severity
        G_LOGGER.severity = G_LOGGER.CRITICAL  # its advice ("large outputs", failed folds) is noise here
        graphs = [model.graph, *(body.graph for body in bodies(model.graph))]
        exclusions = [_exclusion(graph) for graph in graphs]
        # graphsurgeon turns every Constant node it meets (in a body: the enclosing graph's too)
        # into a constant tensor before it looks at exclusions; the excluded ones wear another
        # op name until every graph is folded.
        kept = [n for graph, exclude in zip(graphs, exclusions) for n in graph.nodes
                if n.op == "Constant" and exclude(n)]
        for node in kept:
            node.op = _KEPT_CONSTANT
        try:
            with ort_logs():  # onnxruntime's own warnings go through Presso's logging (-v/-q)
                for index, (graph, exclude) in enumerate(zip(graphs, exclusions)):
                    self._fold(graph, fold_shapes=self.fold_shapes and index == 0, limit=limit, exclude=exclude)
        finally:
            G_LOGGER.severity = severity
            for node in kept:
                node.op = "Constant"
        model.graph.cleanup(remove_unused_graph_inputs=False)
        if self.fold_shapes:
            _merge_ranged_shapes(model, ranged)
        model.invalidate()
        folded = before_nodes - _count_nodes(model.graph)
        return PassResult(changed=folded > 0, stats={"nodes_folded": folded})

    @staticmethod
    def _fold(graph: gs.Graph, *, fold_shapes: bool, limit: int, exclude) -> None:
        graph.fold_constants(
            fold_shapes=fold_shapes,
            recurse_subgraphs=False,
            flatten_subgraphs=False,
            error_ok=True,
            size_threshold=limit,
            should_exclude_node=lambda node: node.op == _KEPT_CONSTANT or exclude(node),
            recurse_functions=False,
        )


def _excluded(node: gs.Node) -> bool:
    if node.op in _NEVER_FOLD or node.op in _NON_TENSOR_OPS:
        return True
    return any(getattr(t, "type", "tensor_type") not in (None, "tensor_type") for t in node.outputs)


# graphsurgeon stores a constant in every body that reads it: a weight that several bodies
# read (the two branches of an If) becomes one stored copy per body once it is a folded
# constant rather than the output of a node of the enclosing graph. Such weights stay put.
_SHARED_WEIGHT_BYTES = 1024
_KEPT_CONSTANT = "PressoKeptConstant"


def _exclusion(graph: gs.Graph):
    """What not to fold in ``graph``: :func:`_excluded`, and nodes that would copy a large
    weight into several bodies (a Constant node read from bodies, an op on an outer weight)."""
    own = {id(n) for n in graph.nodes}

    def read_elsewhere(t: gs.Tensor) -> bool:
        return any(id(user) not in own for user in t.outputs)

    def large(values) -> bool:
        return getattr(values, "nbytes", 0) > _SHARED_WEIGHT_BYTES

    def exclude(node: gs.Node) -> bool:
        if _excluded(node):
            return True
        if node.op == "Constant" and large(getattr(node.attrs.get("value"), "values", None)):
            return any(read_elsewhere(t) for t in node.outputs)
        return any(isinstance(t, gs.Constant) and large(t.values) and read_elsewhere(t) for t in node.inputs)

    return exclude


def _count_nodes(graph: gs.Graph) -> int:
    return len(graph.nodes) + sum(len(body.graph.nodes) for body in bodies(graph))


# graphsurgeon folds Shape, Shape→Gather and Shape→Slice from static dims but ignores the
# `start`/`end` attributes of Shape (opset 15+), folding the whole shape instead of the slice.
# A ranged Shape becomes Shape + Slice for the folder, and is merged back when it stays.
def _split_ranged_shapes(model: Model) -> set[str]:
    """Rewrite each ``Shape(start, end)`` as ``Shape`` + ``Slice``; the names of the Slices."""
    slices = set()
    for node in list(model.graph.nodes):
        if node.op != "Shape" or not ({"start", "end"} & set(node.attrs)):
            continue
        start = int(node.attrs.pop("start", 0))
        end = node.attrs.pop("end", None)
        sliced = node.outputs[0]
        full = gs.Variable(unique_name(model, f"{sliced.name}__full"), dtype=np.int64, shape=None)
        node.outputs.clear()
        node.outputs.append(full)
        bounds = [gs.Constant(f"{sliced.name}__{key}", np.array([value], dtype=np.int64))
                  for key, value in (("starts", start), ("ends", np.iinfo(np.int64).max if end is None else int(end)))]
        model.graph.nodes.append(gs.Node("Slice", name=f"{node.name}__slice", inputs=[full, *bounds],
                                         outputs=[sliced]))
        slices.add(f"{node.name}__slice")
    if slices:
        model.graph.toposort()
    return slices


def _merge_ranged_shapes(model: Model, slices: set[str]) -> None:
    """Undo :func:`_split_ranged_shapes` for the pairs that folding left in place."""
    for node in list(model.graph.nodes):
        if node.op != "Slice" or node.name not in slices:
            continue
        full = node.inputs[0]
        shape = full.inputs[0] if full.inputs else None
        if shape is None or shape.op != "Shape" or len(full.outputs) != 1:
            continue
        start, end = (int(t.values[0]) for t in node.inputs[1:3])
        shape.attrs["start"] = start
        if end != np.iinfo(np.int64).max:
            shape.attrs["end"] = end
        sliced = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        shape.outputs.clear()
        shape.outputs.append(sliced)
    model.graph.cleanup(remove_unused_graph_inputs=False)
