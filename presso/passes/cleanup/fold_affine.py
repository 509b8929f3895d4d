"""`fold-affine`: fold a Mul or Add by a per-channel constant into the linear op before it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.analysis.shapes import apply_inferred_shapes
from ...ir.edit import batch_names
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from .fold_batchnorm import fold_into_linear, is_foldable_linear, per_channel_vector, sole_producer


@register_pass("fold-affine")
class FoldAffine(Pass):
    """Fold ``Mul(h, s)`` and ``Add(h, b)`` into the Conv, ConvTranspose or Gemm producing ``h``.

    Exporters write per-channel affine maps after linear ops as separate nodes (PP-LCNetV3's
    learnable affine blocks in PP-OCR: ``Conv → Mul(scalar) → Add(scalar)``). Left apart, each
    one is another quantized op with its own rounding, and QNN's HTP folds such a Mul into the
    conv weights itself after quantization, re-rounding them (PP-OCR det: whole channels one
    step off the CPU's result). Folded in float, ``s`` scales the weights and bias of each output
    channel and ``b`` adds to the bias. Needs: a constant ``s``/``b`` that is a scalar or varies
    only along the channel axis, and a producer with constant weights whose output only this
    node reads. Runs to a fixed point, so a Mul then Add chain folds completely. Preserves
    semantics (to float rounding).
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        folded = {"Mul": 0, "Add": 0}
        if model.nodes("Mul") or model.nodes("Add"):
            apply_inferred_shapes(model)  # ranks say which axis is the channel axis
        with batch_names(model):
            progress = True
            while progress:
                progress = False
                for node in [*model.nodes("Mul"), *model.nodes("Add")]:
                    if _fold(model, node):
                        folded[node.op] += 1
                        progress = True
        stats = {f"{op.lower()}s": n for op, n in folded.items()}
        return PassResult(changed=bool(sum(folded.values())), stats=stats)


def _fold(model: Model, node: gs.Node) -> bool:
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return False
    a, b = node.inputs
    tensor, const = (a, b) if isinstance(b, gs.Constant) else (b, a)
    if isinstance(tensor, gs.Constant) or not isinstance(const, gs.Constant):
        return False
    if const.values.dtype.kind != "f" or tensor.shape is None or node.outputs[0].shape != tensor.shape:
        return False  # the constant must not broadcast the result to a larger shape
    producer = sole_producer(model, tensor)
    # a MatMul has no bias input: folding would only trade the node for another Add
    if producer is None or producer.op == "MatMul" or not is_foldable_linear(producer):
        return False
    vector = per_channel_vector(const, _output_channels(producer), len(tensor.shape))
    if vector is None or not np.all(np.isfinite(vector)):
        return False
    if node.op == "Mul":
        return fold_into_linear(model, producer, node, vector, np.zeros_like(vector))
    return fold_into_linear(model, producer, node, np.ones_like(vector), vector)


def _output_channels(producer: gs.Node) -> int:
    w = producer.inputs[1].values
    if producer.op == "Conv":
        return int(w.shape[0])
    if producer.op == "ConvTranspose":
        return int(w.shape[1] * int(producer.attrs.get("group", 1)))
    return int(w.shape[0] if int(producer.attrs.get("transB", 0)) else w.shape[1])  # Gemm
