"""`sparsify`: magnitude pruning of weights into unstructured or N:M sparsity.

Zeroes the smallest-magnitude weights of Conv, ConvTranspose, Gemm and MatMul (constant
weights only), either unstructured (a fraction of all entries, per layer or with one global
threshold) or N:M (N non-zeros in every M consecutive weights along the input-channel axis,
the layout sparse tensor cores accelerate). Records a :class:`SparsitySpec` per initializer
(pattern, ratio, axis) that survives save/load and that fine-tuning keeps, and the per-layer
sparsity in the pass stats.

Needs: constant float weights. Lossy.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.annotations import SparsitySpec
from ...ir.edit import set_constant
from ...ir.errors import PipelineError
from ..base import Pass, PassContext, PassResult
from ..cleanup.constants_to_initializers import ConstantsToInitializers
from ..registry import register_pass
from .dependency import node_label


def weight_input_axis(node: gs.Node) -> int | None:
    """The axis of a node's weight (input 1) that runs over its input channels."""
    if node.op == "Conv":
        return 1
    if node.op == "ConvTranspose":
        return 0
    if node.op == "Gemm":
        return 1 if int(node.attrs.get("transB", 0)) else 0
    if node.op == "MatMul":
        w = node.inputs[1]
        return len(w.shape) - 2 if isinstance(w, gs.Constant) and len(w.shape) >= 2 else None
    return None


def nm_mask(values: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """True where a weight survives: the ``n`` largest |w| of every ``m`` along ``axis``."""
    moved = np.moveaxis(np.abs(values), axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = np.argsort(-blocks, axis=-1, kind="stable")
    keep = np.zeros_like(blocks, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


@register_pass("sparsify")
class Sparsify(Pass):
    """Zero weights by magnitude into ``pattern`` (unstructured, 2:4 or 4:8).

    ``sparsity``: fraction of zeros for unstructured (N:M patterns fix it at 1 − N/M).
    ``scope=global`` uses one magnitude threshold across all layers (unstructured only);
    ``scope=layer`` prunes each layer to ``sparsity``. ``keep``: a regex; layers whose node or
    weight name matches stay dense. Layers whose input axis is not a multiple of M are skipped
    for N:M (logged). Lossy.
    """

    pattern: Literal["unstructured", "2:4", "4:8"] = "unstructured"
    sparsity: float = 0.5
    scope: Literal["global", "layer"] = "global"
    keep: str | None = None

    def __init__(self, **options):
        super().__init__(**options)
        if not 0.0 <= self.sparsity < 1.0:
            raise PipelineError(f"sparsify: sparsity={self.sparsity} must be in [0, 1)")
        if self.pattern != "unstructured" and self.scope == "global":
            self.scope = "layer"  # N:M is a per-block pattern: there is no global threshold
        try:
            self._keep = re.compile(self.keep) if self.keep else None
        except re.error as exc:
            raise PipelineError(f"sparsify: keep='{self.keep}' is not a valid regex: {exc}") from None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        # weights written as Constant nodes (Paddle exports: PP-OCR) are invisible until they are initializers
        prepared = ConstantsToInitializers().run(model, ctx).changed
        if prepared:
            model.invalidate()
            model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        keep = self._keep
        layers, log = self._layers(model, keep)
        if not layers:
            return PassResult(changed=prepared, stats={"layers": {}}, log=log + ["no weights to sparsify"])
        if self.pattern == "unstructured":
            masks = self._unstructured(layers)
        else:
            n, m = (int(v) for v in self.pattern.split(":"))
            masks = {}
            for name, (node, weight, ax) in list(layers.items()):
                if weight.shape[ax] % m:
                    log.append(f"{node_label(node)}: {weight.shape[ax]} input channels are not a multiple "
                               f"of {m}; left dense")
                    del layers[name]
                    continue
                masks[name] = nm_mask(np.asarray(weight.values), n, m, ax)
        per_layer = {}
        total = zeros = 0
        for name, mask in masks.items():
            node, weight, ax = layers[name]
            values = np.asarray(weight.values)
            set_constant(weight, np.where(mask, values, np.zeros_like(values)))
            ratio = float(1.0 - mask.mean())
            per_layer[node_label(node)] = round(ratio, 4)
            model.annotations.sparsity[name] = SparsitySpec(
                pattern=self.pattern, ratio=ratio, axis=None if self.pattern == "unstructured" else ax)
            total += mask.size
            zeros += int(mask.size - mask.sum())
        stats = {"layers": per_layer, "weights": total, "zeros": zeros,
                 "sparsity": round(zeros / total, 4) if total else 0.0}
        return PassResult(changed=bool(masks) or prepared, stats=stats, log=log)

    def _layers(self, model: Model, keep) -> tuple[dict[str, tuple[gs.Node, gs.Constant, int]], list[str]]:
        layers, log, seen = {}, [], set()
        for node in model.graph.nodes:
            axis = weight_input_axis(node)
            if axis is None or len(node.inputs) < 2:
                continue
            weight = node.inputs[1]
            if not isinstance(weight, gs.Constant) or np.dtype(weight.dtype).kind != "f":
                continue
            if keep and (keep.search(node.name or "") or keep.search(weight.name)):
                log.append(f"{node_label(node)}: kept dense (matches keep)")
                continue
            if weight.name in seen:
                continue  # a weight shared by several nodes is sparsified once
            seen.add(weight.name)
            layers[weight.name] = (node, weight, axis)
        return layers, log

    def _unstructured(self, layers) -> dict[str, np.ndarray]:
        if self.scope == "global":
            magnitudes = np.concatenate([np.abs(np.asarray(w.values, dtype=np.float64)).ravel()
                                         for _, w, _ in layers.values()])
            count = int(self.sparsity * magnitudes.size)
            threshold = np.partition(magnitudes, count - 1)[count - 1] if count else -1.0
            return {name: _keep_above(np.asarray(w.values), threshold, None) for name, (_, w, _) in layers.items()}
        masks = {}
        for name, (_, w, _) in layers.items():
            values = np.abs(np.asarray(w.values, dtype=np.float64)).ravel()
            count = int(self.sparsity * values.size)
            threshold = np.partition(values, count - 1)[count - 1] if count else -1.0
            masks[name] = _keep_above(np.asarray(w.values), threshold, count)
        return masks


def _keep_above(values: np.ndarray, threshold: float, count: int | None) -> np.ndarray:
    """|w| > threshold; with ``count``, ties at the threshold are broken to zero exactly that many."""
    magnitude = np.abs(values.astype(np.float64))
    keep = magnitude > threshold
    if count is not None:
        ties = np.flatnonzero((magnitude == threshold).ravel())
        extra = (values.size - int(keep.sum())) - count  # zeros beyond the wanted count
        if extra > 0:
            flat = keep.ravel()
            flat[ties[:extra]] = True
            keep = flat.reshape(values.shape)
    return keep
