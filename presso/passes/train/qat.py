"""`qat`: quantization-aware training of a model that already holds Q/DQ nodes.

Needs: QuantizeLinear/DequantizeLinear pairs with calibrated scales (run ``insert-qdq`` and
``calibrate`` first), training data, and PyTorch. Trains with fake-quant in the loop: the
executor rounds and clamps exactly as the Q/DQ nodes do and passes gradients straight through
(STE). With ``learn_scales=true`` the QuantizeLinear scales are learned too (LSQ: gradient of
the step size scaled by 1/√(N·qmax)), and the scale of each DequantizeLinear that reads them
is kept equal. Zero points stay fixed. Trained weights and scales are written back into the
initializers, so ``fold-qdq`` then produces the integer model exactly as after PTQ.

The objective is distillation from the float model (``teacher=original``, ``temperature=1``;
Q/DQ pairs in the teacher are stripped, so the PTQ model works as a teacher too): labels, when
given, are mixed in with weight 1 − α, as in `distill`. Does not preserve
semantics; stats report the KL to the teacher before and after.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model, QuantSpec
from ...ir.errors import PassError
from ..base import PassContext, PassResult
from ..registry import register_pass
from .distill import Distill


@register_pass("qat")
class Qat(Distill):
    """Quantization-aware training with the straight-through estimator and optional LSQ scales."""

    learn_scales: bool = True
    epochs: int = 3
    lr: float = 1e-4
    temperature: float = 1.0
    alpha: float = 0.5

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        quantizers = model.nodes("QuantizeLinear")
        if not quantizers:
            raise PassError("qat found no QuantizeLinear nodes in the model",
                            hint="run insert-qdq and calibrate before qat, e.g. "
                                 "\"insert-qdq,calibrate,qat{epochs=3},fold-qdq\"")
        for node in quantizers:
            scale = node.inputs[1]
            values = getattr(scale, "values", None)
            if values is not None and not (np.all(np.isfinite(values)) and np.all(np.asarray(values) > 0)):
                raise PassError("a QuantizeLinear scale is not positive and finite",
                                where=f"node '{node.name}' (scale '{scale.name}')",
                                hint="run calibrate before qat")
        biases = _unquantize_biases(model)
        result = self._train(model, ctx, learn_scales=self.learn_scales)
        requantized = _requantize_biases(model, biases, result.log)
        updated = _sync_quant_annotations(model)
        result.stats.update(quantizers=len(quantizers), learn_scales=self.learn_scales,
                            annotations_updated=updated, biases_requantized=requantized)
        return result


    def _teacher(self, ctx: PassContext) -> Model:
        """The float model: Q/DQ pairs in the teacher (e.g. the PTQ model that entered this
        pipeline) are stripped, so that fake-quant training distills from float outputs."""
        from ..quant.qdq import strip_qdq

        teacher = super()._teacher(ctx)
        if teacher.nodes("QuantizeLinear", "DequantizeLinear"):
            teacher = teacher.copy()
            strip_qdq(teacher)
        return teacher


def _unquantize_biases(model: Model) -> list[str]:
    """Int32 biases (DQ of an int32 constant, from calibrate) become trainable float biases.

    Their scale must equal input_scale × weight_scale, which learned scales change, so they
    are trained in float and quantized again afterwards (:func:`_requantize_biases`).
    """
    from ...ir.edit import add_initializer

    names = []
    for node in model.nodes("Conv", "ConvTranspose", "Gemm"):
        if len(node.inputs) < 3 or not node.inputs[2].inputs:
            continue
        dq = node.inputs[2].inputs[0]
        q_const = dq.inputs[0]
        if dq.op != "DequantizeLinear" or not isinstance(q_const, gs.Constant) or len(dq.inputs) < 2:
            continue
        if not isinstance(dq.inputs[1], gs.Constant) or np.dtype(q_const.dtype) != np.int32:
            continue
        scale = np.asarray(dq.inputs[1].values)
        zero = np.asarray(dq.inputs[2].values) if len(dq.inputs) > 2 and dq.inputs[2].name else 0
        values = ((np.asarray(q_const.values, np.int64) - zero) * scale.astype(np.float64)).astype(scale.dtype)
        spec = model.annotations.quant.pop(q_const.name, None)
        const = add_initializer(model, f"{node.name}_bias_qat", values.reshape(q_const.shape))
        node.inputs[2] = const
        model.annotations.quant[const.name] = QuantSpec("int32", True, spec.axis if spec else None)
        names.append(const.name)
    if names:
        model.graph.cleanup(remove_unused_graph_inputs=False)
        model.invalidate()
    return names


def _requantize_biases(model: Model, names: list[str], log: list[str]) -> int:
    """Quantize the trained float biases to int32 with the trained scales, as calibrate does."""
    if not names:
        return 0
    from ..quant.calibrate import _quantize_biases  # the one definition of bias quantization

    done = _quantize_biases(model, log)
    model.invalidate()
    return done


def _sync_quant_annotations(model: Model) -> int:
    """Copy learned scales into the QuantSpec annotations of the quantized tensors."""
    updated = 0
    for node in model.nodes("QuantizeLinear"):
        spec = model.annotations.quant.get(node.inputs[0].name)
        scale = node.inputs[1]
        values = getattr(scale, "values", None)
        if spec is not None and values is not None and spec.scale is not None:
            spec.scale = [float(v) for v in np.asarray(values).reshape(-1)]
            updated += 1
    return updated
