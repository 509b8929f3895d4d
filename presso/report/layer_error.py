"""Per-layer error: how far each layer's output in the compressed model is from the float model's.

Both models run on the same samples (``ir.evaluate``, every layer output requested at once);
per layer the signal-to-quantization-noise ratio and the cosine similarity are accumulated over
all samples, so memory stays bounded by one sample's activations. The error at a layer is the
error the model has accumulated up to it (its own rounding and everything upstream), which is
what a user sees grow through the network.

The float side is the input model after the semantics-preserving cleanups that ``insert-qdq``
runs before placing Q/DQ pairs (constant, batch-norm and affine folding, …), so that a Conv's
output names the same quantity in both models. A layer is compared only when the float model
has a tensor of that name, made by a node of the same op type from the same computed inputs
and read by the same kinds of nodes (Q/DQ pairs looked through), and of the same shape at run
time; the others are reported as not comparable, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import Model, evaluate
from ..passes import PassContext, PassManager
from ..passes.cleanup.constants_to_initializers import ConstantsToInitializers
from ..passes.cleanup.fold_batchnorm import FoldBatchNorm
from ..passes.cleanup.fold_constants import FoldConstants
from ..passes.cleanup.remove_identity import RemoveIdentity


@dataclass
class LayerError:
    """Error of one layer's output over every sample (SQNR in dB, inf when exact)."""

    node: str
    tensor: str
    sqnr_db: float
    cosine: float

    def as_dict(self) -> dict:
        return {"node": self.node, "tensor": self.tensor, "sqnr_db": _finite_or_none(self.sqnr_db),
                "exact": math.isinf(self.sqnr_db) and self.sqnr_db > 0, "cosine": self.cosine}


@dataclass
class _Accumulator:
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    shape_mismatch: bool = False
    count: int = 0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64).ravel()
        cand = np.asarray(cand, dtype=np.float64).ravel()
        finite = np.isfinite(ref) & np.isfinite(cand)
        if not finite.all():
            ref, cand = ref[finite], cand[finite]
        diff = ref - cand
        self.signal += float(ref @ ref)
        self.noise += float(diff @ diff)
        self.dot += float(ref @ cand)
        self.ref_sq += float(ref @ ref)
        self.cand_sq += float(cand @ cand)
        self.count += 1

    def result(self, node: str, tensor: str) -> LayerError:
        if self.noise == 0:
            sqnr = math.inf
        elif self.signal == 0:
            sqnr = -math.inf
        else:
            sqnr = 10 * math.log10(self.signal / self.noise)
        norm = math.sqrt(self.ref_sq * self.cand_sq)
        cosine = self.dot / norm if norm > 0 else float(self.noise == 0)
        return LayerError(node, tensor, sqnr, cosine)


@dataclass
class LayerErrors:
    """Per-layer errors by node name, and the layers that could not be compared (and why)."""

    errors: dict[str, LayerError] = field(default_factory=dict)
    not_compared: dict[str, str] = field(default_factory=dict)
    samples: int = 0


def float_reference(model: Model, rounds: int = 3) -> Model:
    """``model`` as ``insert-qdq`` prepares it for quantization (its exact cleanups: constants,
    batch-norm and affine folding, identity removal, opset), in float: a copy through
    ``insert-qdq`` and back (``layer_precision.float_reference``). Repeated until the node
    count holds, since a model cleaned before quantization went through the cleanups twice and
    one fold can enable another."""
    try:
        from ..passes.quant.layer_precision import float_reference as prepared
    except ImportError:  # pragma: no cover - an older tree: the cleanups insert-qdq ran then
        prepared = _cleaned
    reference = model
    for _ in range(rounds):
        before = len(reference.graph.nodes)
        reference = prepared(reference)
        if len(reference.graph.nodes) == before:
            break
    return reference


def _cleaned(model: Model) -> Model:
    reference = model.copy()
    passes = [ConstantsToInitializers(), FoldConstants(), FoldBatchNorm(), RemoveIdentity()]
    PassManager(passes).run(reference, ctx=PassContext(progress=False))
    return reference


def layer_errors(reference: Model, candidate: Model, layers: Sequence[gs.Node],
                 feeds: Sequence[Mapping[str, np.ndarray]], names: Mapping[int, str] | None = None) -> LayerErrors:
    """Error of each of ``layers`` (nodes of ``candidate``) against ``reference``, over ``feeds``;
    results are keyed by ``names[id(node)]`` (default: the node's name)."""
    result = LayerErrors()
    ref_tensors = reference.graph.tensors()
    pairs: dict[str, str] = {}  # tensor name → layer name
    for node in layers:
        if not node.outputs:
            continue
        layer = names[id(node)] if names else node.name
        name = node.outputs[0].name
        ref = ref_tensors.get(name)
        if ref is None or isinstance(ref, gs.Constant) or not ref.inputs:
            result.not_compared[layer] = "no tensor of that name in the float model"
        elif ref.inputs[0].op != node.op:
            result.not_compared[layer] = f"made by {ref.inputs[0].op} in the float model"
        elif not _same_place(node, ref.inputs[0]):
            result.not_compared[layer] = ("computed differently in the float model (other inputs or readers: "
                                          "folded or rewritten by another pass)")
        else:
            pairs[name] = layer
    if not pairs or not feeds:
        return result
    names = list(pairs)
    accumulators = {name: _Accumulator() for name in names}
    for feed in feeds:
        ref_values = evaluate(reference, feed, outputs=names)
        cand_values = evaluate(candidate, feed, outputs=names)
        for name in names:
            acc = accumulators[name]
            ref_value, cand_value = np.asarray(ref_values[name]), np.asarray(cand_values[name])
            if acc.shape_mismatch or ref_value.dtype.kind != "f" or cand_value.dtype.kind != "f":
                continue
            if ref_value.shape != cand_value.shape:
                acc.shape_mismatch = True
                continue
            acc.add(ref_value, cand_value)
        result.samples += 1
    for name, acc in accumulators.items():
        node = pairs[name]
        if acc.shape_mismatch:
            result.not_compared[node] = "its output has another shape in the float model"
        elif acc.count == 0:
            result.not_compared[node] = "its output is not a float tensor"
        else:
            result.errors[node] = acc.result(node, name)
    return result


def _same_place(node: gs.Node, ref_node: gs.Node) -> bool:
    """Whether ``node`` (compressed model) and ``ref_node`` (float) stand at the same place: the
    same computed inputs and the same kinds of readers, Q/DQ pairs looked through. A name alone
    is not enough: a pass that folds an affine Add into a Conv keeps the Conv's output name for
    a different value."""
    def computed_inputs(n: gs.Node) -> list[str]:
        return [t.name for t in map(_through_qdq_up, n.inputs) if t is not None and not isinstance(t, gs.Constant)]

    def readers(tensor: gs.Tensor) -> list[str]:
        return sorted(op for op in _through_qdq_down(tensor))

    return computed_inputs(node) == computed_inputs(ref_node) and readers(node.outputs[0]) == readers(ref_node.outputs[0])


def _through_qdq_up(tensor: gs.Tensor) -> gs.Tensor | None:
    """What ``tensor`` stands for in float: a DequantizeLinear's source (a Q's input), else itself."""
    for _ in range(8):
        source = tensor.inputs[0] if tensor.inputs else None
        if source is None or source.op not in ("QuantizeLinear", "DequantizeLinear") or not source.inputs:
            return tensor
        tensor = source.inputs[0]
    return tensor


def _through_qdq_down(tensor: gs.Tensor, depth: int = 0) -> list[str]:
    """The op types that read ``tensor``, Q/DQ pairs looked through."""
    ops: list[str] = []
    for reader in tensor.outputs:
        if reader.op in ("QuantizeLinear", "DequantizeLinear") and depth < 8:
            ops += _through_qdq_down(reader.outputs[0], depth + 1)
        else:
            ops.append(reader.op)
    return ops


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
