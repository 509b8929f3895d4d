"""`fold-qdq`: turn a calibrated fake-quant model into its deployable integer form.

Step 4 of the quantization flow. Preserves the fake-quant model's semantics: the integers
stored are exactly what its QuantizeLinear nodes computed (ONNX rounding and saturation).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model, create_session
from ...ir.edit import add_initializer, detach_node, producer, replace_all_uses
from ...ir.errors import PassError
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from .qdq import constant_quantizers, qparams
from .qmath import quantize
from .qoperator import lower_to_qoperators


@register_pass("fold-qdq")
class FoldQDQ(Pass):
    """Store weights as integers behind a DequantizeLinear and remove redundant Q/DQ.

    - ``Q(constant W) → DQ`` becomes ``DQ(integer W)`` (int8/int4/… initializer), so the file
      holds integers (≈ 0.25× the float size for int8).
    - ``DQ → Q`` with the same scale and zero point is an identity on integers: removed.
    - Duplicate Q nodes on one tensor with the same parameters are merged.
    - ``qoperator=true`` lowers DQ→op→Q groups to QOperator ops where the types allow it:
      ``QLinearConv``, ``QLinearMatMul``, and (op without an output Q) ``ConvInteger`` /
      ``MatMulInteger`` followed by a float rescale.
    - ``check_load=true`` (default) loads the result in onnxruntime and fails with a clear
      error if it cannot, so a model its runtime refuses is never produced.

    Needs: calibrated scales (run ``calibrate`` first). Preserves semantics with respect to
    the fake-quant input model (to float rounding for the QOperator form).
    """

    preserves_semantics = True
    qoperator: bool = False
    check_load: bool = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        weights = _fold_weights(model)
        identities = _remove_requantize_identities(model)
        merged = _merge_duplicate_quantizers(model)
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        lowered = {}
        if self.qoperator:
            lowered = lower_to_qoperators(model)
            model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
        if self.check_load:
            try:
                create_session(model.to_proto(), optimization="basic")
            except Exception as exc:
                raise PassError(f"the folded model does not load in onnxruntime: {exc}",
                                hint="try qoperator=false, or another scheme (uint8 activations, int8 weights)") from exc
        stats = {"weights_folded": weights, "requantize_removed": identities, "quantizers_merged": merged, **lowered}
        return PassResult(changed=bool(weights or identities or merged or any(lowered.values())), stats=stats)


def _fold_weights(model: Model) -> int:
    folded = 0
    for q, params in constant_quantizers(model):
        w = q.inputs[0]
        ints = quantize(np.asarray(w.values), params.scale.values, params.zero_point.values, params.dtype, params.axis)
        const = add_initializer(model, f"{w.name}_quantized", ints)
        out = q.outputs[0]
        for consumer in list(out.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is out:
                    consumer.inputs[i] = const
        detach_node(model, q)
        # the integer initializer and its DQ now say all the spec said; keeping per-weight
        # JSON in the metadata would cost ~5% of an int8 file
        model.annotations.quant.pop(w.name, None)
        folded += 1
    for name, spec in list(model.annotations.quant.items()):
        if spec.dtype == "int32":  # biases: stored as int32 + DQ since calibrate
            del model.annotations.quant[name]
    return folded


def _remove_requantize_identities(model: Model) -> int:
    """DQ(x; s, z) → Q(s, z): the Q's consumers can read x directly."""
    removed = 0
    for q in model.nodes("QuantizeLinear"):
        dq = producer(q.inputs[0])
        if dq is None or dq.op != "DequantizeLinear":
            continue
        a, b = qparams(dq), qparams(q)
        if a is None or b is None or not a.same_values(b):
            continue
        source = dq.inputs[0]
        if isinstance(source, gs.Constant):
            continue
        replace_all_uses(model, q.outputs[0], source)
        removed += 1
    return removed


def _merge_duplicate_quantizers(model: Model) -> int:
    merged = 0
    for tensor in list(model.graph.tensors().values()):
        qs = [c for c in tensor.outputs if c.op == "QuantizeLinear" and c.inputs[0] is tensor]
        kept: list[gs.Node] = []
        for q in qs:
            params = qparams(q)
            twin = next((k for k in kept if params is not None and qparams(k) is not None
                         and qparams(k).same_values(params)), None)
            if twin is None:
                kept.append(q)
                continue
            replace_all_uses(model, q.outputs[0], twin.outputs[0])
            merged += 1
    return merged
