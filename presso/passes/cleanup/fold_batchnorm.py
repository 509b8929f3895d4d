"""`fold-batchnorm`: fold inference BatchNormalization into the preceding linear op."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.analysis.shapes import apply_inferred_shapes
from ...ir.edit import add_initializer, add_node, detach_node, replace_all_uses
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("fold-batchnorm")
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul that feeds it.

    y = γ·(x − μ)/√(σ² + ε) + β is a per-channel affine map, so it folds into the producer's
    weights (scaled per output channel) and bias. Needs: constant BN parameters, a producer
    with constant weights whose output only the BN reads. With ``standalone=true`` (default),
    a BN that cannot fold becomes a per-channel Mul + Add, so no BatchNormalization remains.
    ``eps_check=true`` refuses a BN whose σ² + ε is not positive and finite (it would fold
    into Inf/NaN weights) and leaves it as is. Preserves semantics.
    """

    preserves_semantics = True
    eps_check: bool = True
    standalone: bool = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        folded = {"Conv": 0, "ConvTranspose": 0, "Gemm": 0, "MatMul": 0}
        to_affine = 0
        skipped: list[str] = []
        if model.nodes("BatchNormalization"):
            apply_inferred_shapes(model)  # ranks decide MatMul folding and the Mul/Add fallback
        for bn in model.nodes("BatchNormalization"):
            params = _bn_params(bn)
            if params is None:
                skipped.append(f"{bn.name}: non-constant parameters or training mode")
                continue
            scale, shift = params
            if self.eps_check and not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
                skipped.append(f"{bn.name}: variance + epsilon is not positive")
                continue
            producer = _foldable_producer(model, bn)
            if producer is not None and _fold_into(model, producer, bn, scale, shift):
                folded[producer.op] += 1
            elif self.standalone and _to_affine(model, bn, scale, shift):
                to_affine += 1
            else:
                skipped.append(f"{bn.name}: no foldable producer")
        stats = {f"into_{op.lower()}": n for op, n in folded.items() if n}
        stats.update({"folded": sum(folded.values()), "to_mul_add": to_affine, "skipped": len(skipped)})
        return PassResult(changed=bool(sum(folded.values()) or to_affine), stats=stats, log=skipped)


def _bn_params(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) with y = scale·x + shift, or None if not foldable."""
    if len(bn.outputs) > 1 and any(t.outputs for t in bn.outputs[1:]):
        return None
    if bn.attrs.get("training_mode", 0):
        return None
    tensors = bn.inputs[1:5]
    if len(tensors) != 4 or not all(isinstance(t, gs.Constant) for t in tensors):
        return None
    gamma, beta, mean, var = (np.asarray(t.values, dtype=np.float64) for t in tensors)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return scale, shift


def _foldable_producer(model: Model, bn: gs.Node) -> gs.Node | None:
    x = bn.inputs[0]
    if len(x.inputs) != 1 or len(x.outputs) != 1 or any(t is x for t in model.graph.outputs):
        return None
    producer = x.inputs[0]
    if producer.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return None
    if not isinstance(producer.inputs[1], gs.Constant):
        return None
    if len(producer.inputs[1].outputs) != 1:  # weight shared with another node
        return None
    if len(producer.inputs) > 2 and producer.inputs[2].name and not isinstance(producer.inputs[2], gs.Constant):
        return None
    return producer


def _fold_into(model: Model, producer: gs.Node, bn: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    weight = producer.inputs[1]
    w = np.asarray(weight.values)
    channels = scale.shape[0]
    op = producer.op
    if op == "Conv":
        if w.shape[0] != channels:
            return False
        new_w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    elif op == "ConvTranspose":
        group = int(producer.attrs.get("group", 1))
        if w.shape[1] * group != channels:
            return False
        grouped = w.reshape(group, w.shape[0] // group, w.shape[1], *w.shape[2:])
        factor = scale.reshape(group, 1, w.shape[1], *([1] * (w.ndim - 2)))
        new_w = (grouped * factor).reshape(w.shape)
    elif op == "Gemm":
        if bn.inputs[0].shape is not None and len(bn.inputs[0].shape) != 2:
            return False
        if float(producer.attrs.get("alpha", 1.0)) != 1.0 or float(producer.attrs.get("beta", 1.0)) != 1.0:
            return False
        trans_b = int(producer.attrs.get("transB", 0))
        if (w.shape[0] if trans_b else w.shape[1]) != channels:
            return False
        new_w = w * (scale.reshape(-1, 1) if trans_b else scale.reshape(1, -1))
    else:  # MatMul: BN's channel axis 1 is MatMul's last axis only for rank-2 outputs
        if w.ndim != 2 or w.shape[1] != channels:
            return False
        out_shape = bn.inputs[0].shape
        if out_shape is None or len(out_shape) != 2:
            return False
        new_w = w * scale.reshape(1, -1)

    bias = np.zeros(channels, dtype=np.float64)
    if op != "MatMul" and len(producer.inputs) > 2 and producer.inputs[2].name:
        old_bias = np.asarray(producer.inputs[2].values, dtype=np.float64)
        bias = np.broadcast_to(old_bias.reshape(-1) if old_bias.size == channels else old_bias, (channels,)).copy()
    new_bias = (bias * scale + shift).astype(w.dtype)

    producer.inputs[1] = add_initializer(model, f"{weight.name}_bnfolded", new_w.astype(w.dtype))
    bias_const = add_initializer(model, f"{producer.name}_bias_bnfolded", new_bias)
    if op == "MatMul":
        add = add_node(model, "Add", [producer.outputs[0], bias_const], name=f"{bn.name}_bias",
                       dtype=bn.outputs[0].dtype, shape=bn.outputs[0].shape)
        replace_all_uses(model, bn.outputs[0], add.outputs[0])
    else:
        if len(producer.inputs) > 2:
            producer.inputs[2] = bias_const
        else:
            producer.inputs.append(bias_const)
        replace_all_uses(model, bn.outputs[0], producer.outputs[0])
    detach_node(model, bn)
    return True


def _to_affine(model: Model, bn: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    x = bn.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if rank is None or rank < 2:
        return False
    dtype = np.dtype(x.dtype) if x.dtype is not None else np.dtype(np.float32)
    broadcast = (-1, *([1] * (rank - 2)))
    mul_c = add_initializer(model, f"{bn.name}_scale", scale.reshape(broadcast).astype(dtype))
    add_c = add_initializer(model, f"{bn.name}_shift", shift.reshape(broadcast).astype(dtype))
    mul = add_node(model, "Mul", [x, mul_c], name=f"{bn.name}_mul", dtype=x.dtype, shape=x.shape)
    add = add_node(model, "Add", [mul.outputs[0], add_c], name=f"{bn.name}_add", dtype=x.dtype, shape=x.shape)
    replace_all_uses(model, bn.outputs[0], add.outputs[0])
    detach_node(model, bn)
    return True
