"""`equalize`: cross-layer equalization of Conv chains (Nagel et al. 2019, "Data-Free Quantization").

Per-channel weight ranges of one conv often differ by orders of magnitude (depthwise convs after
BatchNorm folding most of all), so one per-tensor scale — or the input range of the next conv —
wastes most integer levels on a few channels. For a chain ``conv1 → [Relu | Clip(0, M)] → conv2``
the output channel ``c`` of conv1 can be divided by any ``s_c > 0`` if conv2's input channel
``c`` is multiplied by it, because ReLU is positively homogeneous: ``relu(x / s) = relu(x) / s``.
The paper's choice ``s_c = √(r1_c / r2_c)`` (``r1``: range of conv1's output channel ``c``,
``r2``: range of conv2's input channel ``c``) gives both the same range ``√(r1_c · r2_c)``;
chains of several convs are balanced pair by pair, repeatedly, until the scales settle.

A ReLU6 (``Clip(x, 0, M)``) is not homogeneous: ``clip(x / s, 0, M)`` differs from
``clip(x, 0, M) / s``. With ``relu6=split`` (default) it becomes ``Min(Relu(x / s), M / s)``
with a per-channel bound, which is exact; ``relu6=skip`` leaves such chains alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, add_node, batch_names, detach_node, is_graph_output, unique_name
from ...ir.errors import PassError
from ..base import Pass, PassContext, PassResult
from ..cleanup.constants_to_initializers import ConstantsToInitializers
from ..cleanup.fold_batchnorm import FoldBatchNorm
from ..registry import register_pass

_ACTIVATIONS = ("Relu", "Clip")
_DEAD = 1e-6  # channels whose weight range is below this share of the layer's largest
_MAX_STEP = 100.0  # the most one round may scale a channel by
# ops that sit between two convs in real models and are not positively homogeneous
_NOT_HOMOGENEOUS = ("LeakyRelu", "PRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu", "Selu",
                    "Softplus", "Gelu", "Mish", "Add", "Mul", "BatchNormalization")


@dataclass
class Chain:
    """conv1 → optional activation → the convs reading it, and the scale accumulated so far."""

    first: gs.Node
    activation: gs.Node | None
    clip_max: float | None  # M of a Clip(0, M) activation
    readers: list[gs.Node]
    scale: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


@register_pass("equalize")
class Equalize(Pass):
    """Cross-layer equalization of Conv→Conv and Conv→depthwise-Conv chains (Nagel et al. 2019).

    For each conv whose output reaches only convs (directly, or through one Relu or
    Clip(0, M)), output channel ``c`` of the first conv is divided by ``s_c = √(r1_c / r2_c)``
    and input channel ``c`` of the next convs multiplied by it (``r``: the channels' max |w|),
    so that both get the same range; repeated over all chains for ``iterations`` rounds or until
    no scale moves by more than ``tolerance``. BatchNormalization folds first (``fold-batchnorm``).
    A Clip(0, M) becomes ``Min(Relu(x), M / s)`` (``relu6=split``) or keeps its chain unchanged
    (``relu6=skip``). Chains through other activations (hard-swish, LeakyRelu…), convs whose
    output also feeds a non-conv, shared or non-constant weights are skipped and listed in the
    log. Needs no data. Preserves semantics (to float rounding). Run it before ``insert-qdq``.
    """

    preserves_semantics = True
    iterations: int = 20
    tolerance: float = 1e-3
    relu6: Literal["split", "skip"] = "split"
    exclude: list[str] | None = None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if model.nodes("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            raise PassError("the model already holds quantization nodes", where="pass 'equalize'",
                            hint="run equalize on the float model, before insert-qdq")
        if self.iterations < 1:
            raise PassError(f"equalize's iterations must be ≥ 1, got {self.iterations}")
        prepared = {}
        for step in (ConstantsToInitializers(), FoldBatchNorm()):
            result = step.run(model, ctx)
            if result.changed:
                model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
                model.invalidate()
                prepared[step.name] = result.stats.get("folded", True)
        chains, skipped = find_chains(model, relu6=self.relu6, exclude=self.exclude)
        if not chains:
            return PassResult(changed=bool(prepared), stats={"chains": 0, "skipped": len(skipped), **prepared},
                              log=skipped)
        weights = {id(n): np.asarray(n.inputs[1].values, np.float64) for c in chains for n in (c.first, *c.readers)}
        biases = {id(c.first): _bias(c.first) for c in chains}
        spread_before = _mean_spread(chains, weights)
        rounds = balance(chains, weights, biases, iterations=self.iterations, tolerance=self.tolerance)
        spread_after = _mean_spread(chains, weights)
        with batch_names(model):
            _write_back(model, chains, weights, biases)
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
        stats = {"chains": len(chains), "skipped": len(skipped), "rounds": rounds,
                 "relu6_split": sum(c.clip_max is not None for c in chains),
                 "weight_range_spread": [round(spread_before, 2), round(spread_after, 2)], **prepared}
        log = [f"{c.first.name} → {', '.join(r.name for r in c.readers)}: scales "
               f"{float(c.scale.min()):.3g}…{float(c.scale.max()):.3g}" for c in chains]
        return PassResult(changed=True, stats=stats, log=log + [f"skipped {s}" for s in skipped])


def find_chains(model: Model, *, relu6: str = "split", exclude: list[str] | None = None
                ) -> tuple[list[Chain], list[str]]:
    """The equalizable chains of ``model``, and a line for each conv→…→conv it cannot handle."""
    patterns = [re.compile(p) for p in exclude or []]
    weight_readers: dict[int, int] = {}
    for node in model.graph.nodes:
        for t in node.inputs:
            weight_readers[id(t)] = weight_readers.get(id(t), 0) + 1
    chains, skipped = [], []
    for node in model.graph.nodes:
        if node.op != "Conv" or any(p.fullmatch(node.name) for p in patterns):
            continue
        chain, reason = _chain_from(model, node, relu6, weight_readers, patterns)
        if chain is not None:
            chains.append(chain)
        elif reason:
            skipped.append(f"{node.name}: {reason}")
    return chains, skipped


def _chain_from(model: Model, first: gs.Node, relu6: str, weight_readers: dict[int, int],
                patterns: list[re.Pattern]) -> tuple[Chain | None, str]:
    """The chain that starts at ``first``, or (None, why not; "" when there is no conv after it)."""
    out = first.outputs[0]
    if is_graph_output(model, out) or not out.outputs:
        return None, ""
    activation, clip_max, tensor = None, None, out
    if len(out.outputs) == 1 and out.outputs[0].op in _ACTIVATIONS:
        activation = out.outputs[0]
        tensor = activation.outputs[0]
        if is_graph_output(model, tensor):
            return None, ""
    readers = list(tensor.outputs)
    convs = [r for r in readers if r.op == "Conv" and r.inputs[0] is tensor]
    if not convs:
        ops = {r.op for r in readers}
        if len(readers) == 1 and ops & set(_NOT_HOMOGENEOUS):
            after = readers[0].outputs[0].outputs if readers[0].outputs else []
            if any(n.op == "Conv" for n in after):
                return None, f"{readers[0].op} between convs is not positively homogeneous"
        return None, ""
    if len(convs) != len(readers):
        others = sorted({r.op for r in readers if r not in convs})
        return None, f"its output also feeds {', '.join(others)}"
    if any(any(p.fullmatch(r.name) for p in patterns) for r in convs):
        return None, "a following conv is excluded"
    if activation is not None:
        if activation.op == "Clip":
            bounds = _clip_bounds(activation)
            if bounds is None:
                return None, "Clip with non-constant bounds"
            low, high = bounds
            if low != 0.0:
                return None, f"Clip({low:g}, {high:g}) is not positively homogeneous"
            if np.isfinite(high):
                if relu6 == "skip":
                    return None, f"Clip(0, {high:g}) (relu6=skip)"
                clip_max = high
    for node in (first, *convs):
        reason = _weight_problem(node, weight_readers)
        if reason:
            return None, f"{node.name}: {reason}"
    channels = np.asarray(first.inputs[1].values).shape[0]
    for reader in convs:
        w = np.asarray(reader.inputs[1].values)
        if w.shape[1] * int(reader.attrs.get("group", 1)) != channels:
            return None, f"{reader.name} reads {w.shape[1] * int(reader.attrs.get('group', 1))} channels, not {channels}"
    return Chain(first, activation, clip_max, convs), ""


def _weight_problem(node: gs.Node, weight_readers: dict[int, int]) -> str:
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return "non-constant weight"
    w = np.asarray(node.inputs[1].values)
    if w.dtype.kind != "f" or w.ndim < 3:
        return "weight is not a float conv kernel"
    if weight_readers.get(id(node.inputs[1]), 0) > 1:
        return "shared weight"
    if len(node.inputs) > 2 and node.inputs[2].name:
        if not isinstance(node.inputs[2], gs.Constant):
            return "non-constant bias"
        if weight_readers.get(id(node.inputs[2]), 0) > 1:
            return "shared bias"
    return ""


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        if index < len(node.inputs) and node.inputs[index].name:
            if not isinstance(node.inputs[index], gs.Constant):
                return None
            bounds.append(float(np.asarray(node.inputs[index].values).reshape(())))
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def _bias(node: gs.Node) -> np.ndarray | None:
    if len(node.inputs) > 2 and node.inputs[2].name:
        return np.asarray(node.inputs[2].values, np.float64)
    return None


def _output_ranges(w: np.ndarray) -> np.ndarray:
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _input_ranges(w: np.ndarray, groups: int) -> np.ndarray:
    """max |w| per input channel of a (grouped) conv kernel [O, C/groups, k…]."""
    out, per_group = w.shape[0], w.shape[1]
    grouped = np.abs(w).reshape(groups, out // groups, per_group, -1)
    return grouped.max(axis=(1, 3)).reshape(-1)


def _scale_inputs(w: np.ndarray, groups: int, s: np.ndarray) -> np.ndarray:
    out, per_group = w.shape[0], w.shape[1]
    grouped = w.reshape(groups, out // groups, per_group, -1) * s.reshape(groups, 1, per_group, 1)
    return grouped.reshape(w.shape)


def balance(chains: list[Chain], weights: dict[int, np.ndarray], biases: dict[int, np.ndarray | None], *,
            iterations: int, tolerance: float) -> int:
    """Equalize every chain's ranges in ``weights``/``biases`` (float64, changed in place),
    ``iterations`` rounds at most; returns the rounds run. Each chain's ``scale`` ends as the
    product of its per-round scales (what its Clip bound is divided by)."""
    for chain in chains:
        chain.scale = np.ones(weights[id(chain.first)].shape[0])
    for round_ in range(1, iterations + 1):
        largest = 0.0
        for chain in chains:
            w1 = weights[id(chain.first)]
            r1 = _output_ranges(w1)
            r2 = np.max([_input_ranges(weights[id(r)], int(r.attrs.get("group", 1))) for r in chain.readers], axis=0)
            # A dead channel (weights ≈ 0 on either side) keeps scale 1: dividing its weights by
            # a tiny scale would leave its bias, a constant output, huge (PP-OCR det has such
            # channels: scales of 1e-14 blew the next activation range up by 1e13).
            live = (r1 > _DEAD * r1.max()) & (r2 > _DEAD * r2.max())
            s = np.ones_like(r1)
            s[live] = np.clip(np.sqrt(r1[live] / r2[live]), 1 / _MAX_STEP, _MAX_STEP)
            weights[id(chain.first)] = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
            if biases[id(chain.first)] is not None:
                biases[id(chain.first)] = biases[id(chain.first)] / s
            for reader in chain.readers:
                weights[id(reader)] = _scale_inputs(weights[id(reader)], int(reader.attrs.get("group", 1)), s)
            chain.scale = chain.scale * s
            largest = max(largest, float(np.max(np.abs(np.log(s)))))
        if largest < tolerance:
            return round_
    return iterations


def _mean_spread(chains: list[Chain], weights: dict[int, np.ndarray]) -> float:
    """Mean over the chains' convs of max/median output-channel range (1 = balanced)."""
    spreads = []
    for node in {id(n): n for c in chains for n in (c.first, *c.readers)}.values():
        r = _output_ranges(weights[id(node)])
        median = float(np.median(r))
        if median > 0:
            spreads.append(float(r.max()) / median)
    return float(np.mean(spreads)) if spreads else 1.0


def _write_back(model: Model, chains: list[Chain], weights: dict[int, np.ndarray],
                biases: dict[int, np.ndarray | None]) -> None:
    nodes = {id(n): n for c in chains for n in (c.first, *c.readers)}
    for key, node in nodes.items():
        old = node.inputs[1]
        node.inputs[1] = add_initializer(model, f"{old.name}_cle", weights[key].astype(np.asarray(old.values).dtype))
    for chain in chains:
        bias = biases[id(chain.first)]
        if bias is not None:
            old = chain.first.inputs[2]
            chain.first.inputs[2] = add_initializer(model, f"{old.name}_cle", bias.astype(np.asarray(old.values).dtype))
        if chain.clip_max is not None:
            _split_clip(model, chain)


def _split_clip(model: Model, chain: Chain) -> None:
    """Clip(x, 0, M) → Min(Relu(x), M / s) with a per-channel bound (exact for x scaled by 1/s)."""
    clip = chain.activation
    rank = np.asarray(chain.first.inputs[1].values).ndim
    dtype = np.asarray(chain.first.inputs[1].values).dtype
    bound = (chain.clip_max / chain.scale).astype(dtype).reshape((-1,) + (1,) * (rank - 2))
    x, out = clip.inputs[0], clip.outputs[0]
    detach_node(model, clip)
    relu = add_node(model, "Relu", [x], name=f"{clip.name}_relu", dtype=out.dtype)
    model.graph.nodes.append(gs.Node("Min", name=unique_name(model, f"{clip.name}_min"),
                                     inputs=[relu.outputs[0], add_initializer(model, f"{clip.name}_bound", bound)],
                                     outputs=[out]))
