"""`fold-constants`: evaluate every subgraph whose inputs are all constant."""

from __future__ import annotations

from onnx_graphsurgeon.logger import G_LOGGER

from ...ir import Model
from ...ir.analysis.shapes import apply_inferred_shapes
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass

# Folding these would undo quantization: the integer weight would become a float constant.
_NEVER_FOLD = {"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"}


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Replace constant subgraphs by their values (onnx-graphsurgeon's folder, run by onnxruntime).

    Folds ``Constant`` and ``ConstantOfShape`` nodes, arithmetic on initializers, and, when
    shapes are static (``fold_shapes=true``, after shape inference), ``Shape``-derived
    subgraphs such as the targets of Reshape. Q/DQ nodes are never folded, so quantized
    weights stay integers. ``max_size_mb`` skips results larger than that (e.g. an Expand that
    would store a huge tensor). Preserves semantics.
    """

    preserves_semantics = True
    fold_shapes: bool = True
    max_size_mb: float | None = None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        before_nodes = len(model.graph.nodes)
        if self.fold_shapes:
            apply_inferred_shapes(model)
        threshold = int(self.max_size_mb * 2**20) if self.max_size_mb else None
        severity = G_LOGGER.severity
        G_LOGGER.severity = G_LOGGER.ERROR  # its "large outputs" advice is noise here: weights are large
        try:
            model.graph.fold_constants(
                fold_shapes=self.fold_shapes,
                error_ok=True,
                size_threshold=threshold,
                should_exclude_node=lambda node: node.op in _NEVER_FOLD,
            )
        finally:
            G_LOGGER.severity = severity
        model.graph.cleanup(remove_unused_graph_inputs=False)
        model.invalidate()
        folded = before_nodes - len(model.graph.nodes)
        return PassResult(changed=folded > 0, stats={"nodes_folded": folded})
