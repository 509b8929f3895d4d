"""Activation rewrites: hard-swish written out as Add/Clip/Mul/Div becomes ``HardSwish``;
``HardSigmoid`` becomes Mul/Add/Clip; a Div by a constant becomes a Mul by its reciprocal."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, batch_names, detach_node, replace_all_uses, unique_name
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from ._match import close, const_value, only_consumer, other_input, rewrite_each, scalar


@register_pass("fuse-hardswish")
class FuseHardSwish(Pass):
    """Replace ``x · Clip(x + 3, 0, 6) / 6`` (also ``· (1/6)``, and ``x · HardSigmoid(x)`` with
    α = 1/6, β = 0.5) by one ``HardSwish`` node (opset ≥ 14; the model is left alone below).

    Exporters (Paddle2ONNX, older PyTorch) spell hard-swish as four ops; an NPU that validates
    each op as a quantized unit then needs four requantizations where one op suffices.
    Needs: constant 3, 0, 6 and 6 (or 1/6), intermediate values read only by the pattern.
    Preserves semantics.
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if model.opset < 14:
            return PassResult(changed=False, stats={"fused": 0, "skipped": "opset < 14"})
        fused = rewrite_each(model, ("Clip", "HardSigmoid"), lambda gate: self._fuse(model, gate))
        return PassResult(changed=bool(fused), stats={"fused": fused})

    def _fuse(self, model: Model, gate: gs.Node) -> bool:
        if gate.op == "Clip":
            if len(gate.inputs) < 3 or not (close(scalar(gate.inputs[1]), 0.0) and close(scalar(gate.inputs[2]), 6.0)):
                return False
            add = gate.inputs[0].inputs[0] if gate.inputs[0].inputs else None
            if add is None or add.op != "Add" or only_consumer(add.outputs[0], model) is not gate:
                return False
            x = next((t for t in add.inputs if close(scalar(other_input(add, t)), 3.0)), None)
            divisor = 6.0
        else:
            if not (close(gate.attrs.get("alpha", 0.2), 1 / 6) and close(gate.attrs.get("beta", 0.5), 0.5)):
                return False
            add, x, divisor = None, gate.inputs[0], 1.0
        if x is None:
            return False
        mul = only_consumer(gate.outputs[0], model)
        if mul is None or mul.op != "Mul" or other_input(mul, gate.outputs[0]) is not x:
            return False
        end, tail = mul.outputs[0], None
        if divisor != 1.0:
            tail = only_consumer(end, model)
            if tail is None or len(tail.inputs) != 2 or tail.inputs[0] is not end:
                return False
            k = scalar(tail.inputs[1])
            if not ((tail.op == "Div" and close(k, 6.0)) or (tail.op == "Mul" and close(k, 1 / 6))):
                return False
            end = tail.outputs[0]
        node = gs.Node("HardSwish", name=unique_name(model, f"{mul.name}_hardswish"), inputs=[x],
                       outputs=[gs.Variable(unique_name(model, f"{end.name}_hs"), dtype=end.dtype, shape=end.shape)])
        model.graph.nodes.append(node)
        replace_all_uses(model, end, node.outputs[0])
        for dead in (tail, mul, gate, add):
            if dead is not None:
                detach_node(model, dead)
        return True


@register_pass("expand-hardsigmoid")
class ExpandHardSigmoid(Pass):
    """Rewrite ``HardSigmoid(x; α, β)`` as ``Clip(x·α + β, 0, 1)``.

    The QNN HTP rejects quantized HardSigmoid (ElementWiseNeuron, error 3110) but runs Mul, Add
    and Clip. Run ``fuse-hardswish`` first so that hard-swish gates become one op instead.
    Preserves semantics.
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        rewritten = 0
        with batch_names(model):
            for node in model.nodes("HardSigmoid"):
                x, y = node.inputs[0], node.outputs[0]
                dtype = np.dtype(x.dtype) if x.dtype is not None else np.dtype(np.float32)
                alpha = add_initializer(model, f"{node.name}_alpha", np.array(node.attrs.get("alpha", 0.2), dtype))
                beta = add_initializer(model, f"{node.name}_beta", np.array(node.attrs.get("beta", 0.5), dtype))
                lo = add_initializer(model, f"{node.name}_lo", np.array(0.0, dtype))
                hi = add_initializer(model, f"{node.name}_hi", np.array(1.0, dtype))
                t1 = gs.Variable(unique_name(model, f"{node.name}_scaled"), dtype=x.dtype, shape=x.shape)
                t2 = gs.Variable(unique_name(model, f"{node.name}_shifted"), dtype=x.dtype, shape=x.shape)
                new = [gs.Node("Mul", name=unique_name(model, f"{node.name}_mul"), inputs=[x, alpha], outputs=[t1]),
                       gs.Node("Add", name=unique_name(model, f"{node.name}_add"), inputs=[t1, beta], outputs=[t2])]
                clip_out = gs.Variable(unique_name(model, f"{node.name}_clipped"), dtype=y.dtype, shape=y.shape)
                new.append(gs.Node("Clip", name=unique_name(model, f"{node.name}_clip"), inputs=[t2, lo, hi],
                                   outputs=[clip_out]))
                model.graph.nodes.extend(new)
                replace_all_uses(model, y, clip_out)
                detach_node(model, node)
                rewritten += 1
        if rewritten:
            model.graph.toposort()
        return PassResult(changed=bool(rewritten), stats={"rewritten": rewritten})


@register_pass("div-to-mul")
class DivToMul(Pass):
    """Rewrite ``Div(x, c)`` with a constant float ``c`` (no zeros) as ``Mul(x, 1/c)``.

    A quantized Mul by a constant is cheaper than a Div on integer engines, and equal to float
    rounding. Preserves semantics.
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        rewritten = 0
        with batch_names(model):
            for node in model.nodes("Div"):
                c = const_value(node.inputs[1])
                if c is None or c.dtype.kind != "f" or not np.all(c != 0) or not np.all(np.isfinite(c)):
                    continue
                node.op = "Mul"
                node.inputs[1] = add_initializer(model, f"{node.name}_reciprocal", (1.0 / c).astype(c.dtype))
                rewritten += 1
        if rewritten:
            model.graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(changed=bool(rewritten), stats={"rewritten": rewritten})


__all__ = ["DivToMul", "ExpandHardSigmoid", "FuseHardSwish"]
