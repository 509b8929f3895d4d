"""`infer-shapes`: annotate every tensor with the shape and dtype that ONNX inference finds."""

from __future__ import annotations

from ...ir import Model
from ...ir.analysis.shapes import apply_inferred_shapes, fix_input_shapes
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Run ``onnx.shape_inference`` (with data propagation) and store shapes on the graph.

    ``batch=N`` first fixes every dynamic axis-0 input dimension (named, -1 or unknown) to
    N. Preserves semantics (only value types change, which onnxruntime checks at load time).
    """

    preserves_semantics = True
    batch: int | None = None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        fixed = []
        if self.batch is not None:
            # a named batch dimension is fixed wherever it appears; -1/unnamed ones per input
            dims = {t.shape[0]: self.batch for t in model.graph.inputs
                    if t.shape and isinstance(t.shape[0], str)}
            shapes = {t.name: [self.batch] + [None] * (len(t.shape) - 1) for t in model.graph.inputs
                      if t.shape and not isinstance(t.shape[0], str) and not (isinstance(t.shape[0], int)
                                                                               and t.shape[0] > 0)}
            fixed = fix_input_shapes(model, shapes, dims=dims)
        annotated = apply_inferred_shapes(model)
        return PassResult(changed=bool(annotated or fixed), stats={"annotated": annotated, "fixed_inputs": len(fixed)})
