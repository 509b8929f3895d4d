"""`fold-batchnorm`: fold inference BatchNormalization into the preceding linear op."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.analysis.shapes import apply_inferred_shapes
from ...ir.edit import add_initializer, add_node, batch_names, detach_node, replace_all_uses
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("fold-batchnorm")
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul that feeds it.

    y = γ·(x − μ)/√(σ² + ε) + β is a per-channel affine map, so it folds into the producer's
    weights (scaled per output channel) and bias. Needs: constant BN parameters, a producer
    with constant weights whose output only the BN reads (an Add of a per-channel constant
    in between, as Paddle2ONNX writes biases, folds into the bias too). With ``standalone=true`` (default),
    a BN that cannot fold becomes a per-channel Mul + Add, so no BatchNormalization remains.
    ``eps_check=true`` refuses a BN whose σ² + ε is not positive and finite (it would fold
    into Inf/NaN weights) and leaves it as is. Preserves semantics.
    """

    preserves_semantics = True
    eps_check: bool = True
    standalone: bool = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        folded = {"Conv": 0, "ConvTranspose": 0, "Gemm": 0, "MatMul": 0, "to_mul_add": 0}
        skipped: list[str] = []
        if model.nodes("BatchNormalization"):
            apply_inferred_shapes(model)  # ranks decide MatMul folding and the Mul/Add fallback
        with batch_names(model):  # every new name below comes from the edit helpers
            self._fold_all(model, folded, skipped)
        to_affine = folded.pop("to_mul_add")
        stats = {f"into_{op.lower()}": n for op, n in folded.items() if n}
        stats.update({"folded": sum(folded.values()), "to_mul_add": to_affine, "skipped": len(skipped)})
        return PassResult(changed=bool(sum(folded.values()) or to_affine), stats=stats, log=skipped)

    def _fold_all(self, model: Model, folded: dict[str, int], skipped: list[str]) -> None:
        for bn in model.nodes("BatchNormalization"):
            params = _bn_params(bn, model.graph.outputs)
            if params is None:
                skipped.append(f"{bn.name}: non-constant parameters or training mode")
                continue
            scale, shift = params
            if self.eps_check and not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
                skipped.append(f"{bn.name}: variance + epsilon is not positive")
                continue
            producer, add_bias = _foldable_producer(model, bn, scale.shape[0])
            # BN(h + b) = scale·h + (scale·b + shift): the Add in between folds too
            fold_shift = shift if add_bias is None else shift + scale * add_bias
            if producer is not None and fold_into_linear(model, producer, bn, scale, fold_shift):
                folded[producer.op] += 1
            elif self.standalone and _to_affine(model, bn, scale, shift):
                folded["to_mul_add"] += 1
            else:
                skipped.append(f"{bn.name}: no foldable producer")


def _bn_params(bn: gs.Node, model_outputs: list[gs.Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) with y = scale·x + shift, or None if not foldable."""
    if len(bn.outputs) > 1 and any(t.outputs or any(t is o for o in model_outputs) for t in bn.outputs[1:]):
        return None  # running statistics are read: a training-mode BN
    if bn.attrs.get("training_mode", 0):
        return None
    tensors = bn.inputs[1:5]
    if len(tensors) != 4 or not all(isinstance(t, gs.Constant) for t in tensors):
        return None
    gamma, beta, mean, var = (np.asarray(t.values, dtype=np.float64) for t in tensors)
    if not gamma.ndim == beta.ndim == mean.ndim == var.ndim == 1:
        return None  # opset < 9 with spatial=0: per-element, not per-channel, parameters
    eps = float(bn.attrs.get("epsilon", 1e-5))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return scale, shift


def _foldable_producer(model: Model, bn: gs.Node, channels: int) -> tuple[gs.Node | None, np.ndarray | None]:
    """The linear node to fold into, and the per-channel bias of an Add in between, if any.

    Exporters such as Paddle2ONNX write a bias-free ConvTranspose (or Conv) followed by an
    Add of a [1, C, 1, 1] constant; that Add folds into the bias along with the BN.
    """
    producer = sole_producer(model, bn.inputs[0])
    if producer is not None and producer.op == "Add":
        a, b = producer.inputs
        tensor, const = (a, b) if isinstance(b, gs.Constant) else (b, a)
        rank = len(bn.inputs[0].shape) if bn.inputs[0].shape is not None else None
        bias = per_channel_vector(const, channels, rank) if isinstance(const, gs.Constant) else None
        linear = sole_producer(model, tensor) if bias is not None and not isinstance(tensor, gs.Constant) else None
        if linear is not None and is_foldable_linear(linear):
            return linear, bias
        return None, None
    if producer is not None and is_foldable_linear(producer):
        return producer, None
    return None, None


def sole_producer(model: Model, x: gs.Tensor) -> gs.Node | None:
    """The node producing ``x`` when only one node reads ``x`` and it is no graph output."""
    if len(x.inputs) != 1 or len(x.outputs) != 1 or any(t is x for t in model.graph.outputs):
        return None
    return x.inputs[0]


def is_foldable_linear(producer: gs.Node) -> bool:
    if producer.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(producer.inputs) < 2:
        return False
    if not isinstance(producer.inputs[1], gs.Constant):
        return False
    if len(producer.inputs[1].outputs) != 1:  # weight shared with another node
        return False
    if len(producer.inputs) > 2 and producer.inputs[2].name and not isinstance(producer.inputs[2], gs.Constant):
        return False
    return True


def per_channel_vector(const: gs.Constant, channels: int, rank: int | None) -> np.ndarray | None:
    """``const`` as a length-``channels`` vector if it broadcasts along axis 1 only, else None."""
    values = np.asarray(const.values, dtype=np.float64)
    if rank is None or values.ndim > rank:
        return None
    full = (1,) * (rank - values.ndim) + values.shape
    if full[0] != 1 or full[1] not in (1, channels) or any(d != 1 for d in full[2:]):
        return None
    return np.broadcast_to(values.reshape(-1), (channels,)).copy()


def fold_into_linear(model: Model, producer: gs.Node, bn: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Fold ``bn`` (any node computing ``scale·h + shift`` per output channel of ``h``, the
    producer's only output) into the producer's weights and bias; False if the shapes don't fit."""
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
        if producer.outputs[0].shape is not None and len(producer.outputs[0].shape) != 2:
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
        out_shape = producer.outputs[0].shape
        if out_shape is None or len(out_shape) != 2:
            return False
        new_w = w * scale.reshape(1, -1)

    bias = np.zeros(channels, dtype=np.float64)
    if op != "MatMul" and len(producer.inputs) > 2 and producer.inputs[2].name:
        old_bias = np.asarray(producer.inputs[2].values, dtype=np.float64)
        if old_bias.size not in (1, channels) or (op == "Gemm" and old_bias.ndim == 2 and old_bias.shape[1] != channels):
            return False  # a Gemm bias that varies along the batch axis is not per-channel
        bias = np.broadcast_to(old_bias.reshape(-1), (channels,)).copy()
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
