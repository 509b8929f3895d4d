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
from .qdq import constant_quantizers, qparams, scalarize_qparams
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
    - ``drop_zero_points=true`` (default): a DequantizeLinear of an integer constant (weight,
      int32 bias) whose zero point is all zeros loses it — zero is ONNX's default, and the
      zero points of symmetric per-channel weights and of biases take ≈ 2.5% of an int8 file
      (int32 zeros for a bias). Onnxruntime fuses the same QDQ groups either way.
    - ``scalar_qparams=true`` (default): one-element per-tensor scales and zero points become
      rank-0 scalars: the same numbers, and the form onnxruntime's QDQ fusions (QLinearAdd,
      QLinearMul, Clip removal) match — so under onnxruntime's default optimizations more of
      the model runs in int8 kernels, as in a compiled artifact.
    - Quantization annotations are dropped once the graph holds what they said (the integer
      weight and its DequantizeLinear, the calibrated Q/DQ parameters of activations).
    - ``check_load=true`` (default) loads the result in onnxruntime and fails with a clear
      error if it cannot, so a model its runtime refuses is never produced.

    Needs: calibrated scales (run ``calibrate`` first). Preserves semantics with respect to
    the fake-quant input model (to float rounding for the QOperator form).
    """

    preserves_semantics = True
    qoperator: bool = False
    drop_zero_points: bool = True
    scalar_qparams: bool = True
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
        finished = _target_finish(model, ctx)
        zeros = drop_constant_zero_points(model) if self.drop_zero_points else 0
        scalars = scalarize_qparams(model) if self.scalar_qparams else 0
        _drop_activation_specs(model)
        model.invalidate()
        if self.check_load:
            try:
                create_session(model.to_proto(), optimization="basic")
            except Exception as exc:
                raise PassError(f"the folded model does not load in onnxruntime: {exc}",
                                hint="try qoperator=false, or another scheme (uint8 activations, int8 weights)") from exc
        stats = {"weights_folded": weights, "requantize_removed": identities, "quantizers_merged": merged,
                 "zero_points_dropped": zeros, "qparams_scalarized": scalars, **lowered, **finished}
        return PassResult(changed=bool(weights or identities or merged or zeros or scalars or any(lowered.values())),
                          stats=stats)


def _target_finish(model: Model, ctx: PassContext) -> dict[str, int]:
    """Run the target's ``finish`` pipeline (e.g. qnn-htp's ``drop-saturated-activations``),
    the rewrites its engine needs on the integer form; nothing without a target."""
    text = getattr(getattr(ctx, "target", None), "finish", "") if ctx is not None else ""
    if not text:
        return {}
    from ..pipeline import parse_pipeline

    stats = {}
    for step in parse_pipeline(text):
        result = step.run(model, ctx)
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
        stats[f"finish_{step.name}"] = int(result.changed)
    return stats


def _fold_weights(model: Model) -> int:
    folded = 0
    for q, params in constant_quantizers(model):
        w = q.inputs[0]
        ints = quantize(np.asarray(w.values), params.scale.values, params.zero_point.values, params.dtype, params.axis)
        const = add_initializer(model, f"{w.name}_{params.dtype}", ints)
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


# Consumers whose onnxruntime QDQ fusion needs an explicit weight zero point: DQ → Gemm becomes
# QGemm only with one (onnxruntime 1.32, measured); Conv, ConvTranspose, MatMul and the
# constant operands of Add/Mul fuse the same without.
_NEEDS_ZERO_POINT = {"Gemm"}


def drop_constant_zero_points(model: Model) -> int:
    """Remove all-zero zero points from DequantizeLinear nodes that read an integer constant.

    ONNX's default zero point is zero of the input's type, so the model computes exactly the
    same. Activation Q/DQ pairs keep theirs (scalars; onnxruntime's pair matching expects
    them), and so do weights of ops in ``_NEEDS_ZERO_POINT``. Returns how many were removed.
    """
    removed = 0
    for dq in model.nodes("DequantizeLinear"):
        if len(dq.inputs) < 3 or not isinstance(dq.inputs[0], gs.Constant):
            continue
        if np.dtype(dq.inputs[0].values.dtype) != np.int32 and any(
                c.op in _NEEDS_ZERO_POINT for c in dq.outputs[0].outputs):
            continue
        zero = dq.inputs[2]
        if not isinstance(zero, gs.Constant) or zero.values is None or np.any(np.asarray(zero.values)):
            continue
        if np.dtype(zero.values.dtype) != np.dtype(dq.inputs[0].values.dtype):
            continue
        del dq.inputs[2]
        removed += 1
    if removed:
        model.graph.cleanup(remove_unused_graph_inputs=False)
    return removed


def _drop_activation_specs(model: Model) -> None:
    """Quant specs of activations whose Q node holds calibrated constants: the graph says it all."""
    for q in model.nodes("QuantizeLinear"):
        params = qparams(q)
        spec = model.annotations.quant.get(q.inputs[0].name)
        if params is not None and spec is not None and spec.dtype == params.dtype:
            del model.annotations.quant[q.inputs[0].name]


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
