"""`static-shapes`: give every dynamic model input the concrete shape of the data it will see."""

from __future__ import annotations

from ...ir import DataSource, Model
from ...ir.analysis.shapes import dynamic_inputs, fix_input_shapes
from ...ir.errors import PassError
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("static-shapes")
class StaticShapes(Pass):
    """Fix dynamic input dimensions from the first sample of the pass context's data
    (``batch`` samples per run, default 1); then shape chains (Shape → Slice → Concat …) fold.

    Engines that compile a fixed graph (the QNN HTP: "Dynamic shape is not supported") need
    it; ``presso opt --shape`` / ``presso compile --shape`` give the shapes explicitly instead.
    Needs: data, unless no input is dynamic. Preserves semantics for inputs of that shape.
    """

    preserves_semantics = True
    batch: int = 1

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        dynamic = dynamic_inputs(model)
        if not dynamic:
            return PassResult(changed=False, stats={"fixed": 0})
        if ctx.data is None:
            raise PassError(f"inputs {sorted(dynamic)} have dynamic shapes and no data gives them",
                            hint="give --shape NAME=D1,D2,… (or calibration data) so the shapes can be fixed")
        feed = next(iter(DataSource.open(ctx.data, model).feeds(batch=self.batch, limit=self.batch)))
        fixed = fix_input_shapes(model, {name: list(feed[name].shape) for name in dynamic if name in feed})
        model.invalidate()
        return PassResult(changed=bool(fixed), stats={"fixed": len(fixed)},
                          log=[f"{name}: {list(feed[name].shape)}" for name in fixed])


__all__ = ["StaticShapes"]
