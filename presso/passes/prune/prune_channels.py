"""`prune-channels`: structured pruning that removes whole channels from the model.

Scores every unit of the `channel-groups` analysis with a criterion, picks the units to remove
globally or per group under constraints (protected layers, a minimum channel count, rounding
the kept count to a hardware-friendly multiple), and rewrites the model so it stays valid.

Needs: constant weights and static input shapes apart from the batch axis: a dynamic batch
is fixed to 1 while the pass works and made dynamic again after, so the pruned model keeps it.
With ``prepare=true`` (the default) the model is first made prunable, as ``insert-qdq``
prepares for quantization: Constant nodes become initializers, constant subgraphs fold (shape
subgraphs that need the batch stay), Identity/Dropout go. Does not preserve semantics
(removing channels is lossy; fine-tune afterwards); the manager measures the error.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from typing import Literal

import numpy as np

from ...ir import Model, compute_cost
from ...ir.analysis.batch import concrete_batch
from ...ir.errors import PassError, PipelineError
from ..base import Pass, PassContext, PassResult
from ..cleanup.constants_to_initializers import ConstantsToInitializers
from ..cleanup.fold_constants import FoldConstants
from ..cleanup.remove_identity import RemoveIdentity
from ..registry import register_pass
from .dependency import ChannelGroups, channel_groups
from .importance import unit_scores
from .rewrite import remove_channels

logger = logging.getLogger(__name__)


@register_pass("prune-channels")
class PruneChannels(Pass):
    """Remove the least important channels (units of `channel-groups`).

    ``ratio``: fraction of the channels of prunable groups to remove. ``criterion``: l1, l2
    (weight norms of every member), bn-gamma (|γ| of the BatchNormalization in the group, L1
    where there is none), taylor (|Σ w·∂L/∂w| on data, needs the `train` extra), random.
    ``scope=global`` ranks all units together (scores divided by their group's mean so that
    groups compare fairly); ``scope=layer`` removes ``ratio`` of every group. ``round_to``:
    the kept count of each group is rounded up to a multiple of it; ``min_channels``: groups
    keep at least that many. Whatever the options, every tensor keeps at least one channel (a
    producer coupled with padding or with a wider producer is never emptied). ``keep``: a
    regex; groups whose producers' names match are not pruned. ``flops_target``: instead of
    ``ratio``, prune until the FLOPs fall to that fraction of the original (e.g. 0.5).
    ``norms``: also prune channels that a LayerNormalization (or its written-out form,
    ReduceMean/ReduceSum over the channels) normalizes together, slicing its scale and bias as
    Torch-Pruning does; the statistics then cover the kept channels, so distill afterwards (off
    by default: on magika, distillation recovered less than pruning without it at equal FLOPs).
    ``prepare``: make the model prunable first (module docstring). A dynamic batch is fixed to
    1 while pruning and stays dynamic in the output. Warns, with the reasons, when it removes
    nothing. Lossy.
    """

    ratio: float = 0.3
    criterion: Literal["l1", "l2", "bn-gamma", "taylor", "random"] = "l1"
    scope: Literal["global", "layer"] = "global"
    round_to: int = 8
    min_channels: int = 8
    keep: str | None = None
    flops_target: float | None = None
    samples: int = 8  # data samples for criterion=taylor
    norms: bool = False
    prepare: bool = True

    def __init__(self, **options):
        super().__init__(**options)
        self._check_options()

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        prepared = _prepare(model, ctx) if self.prepare else {}
        with concrete_batch(model, 1, needs="prune-channels", error=PassError) as batch:
            result = self._prune(model, ctx)
        result.changed = result.changed or bool(prepared)
        result.stats.update(prepared)
        if batch is not None:
            result.log.append(f"pruned with a batch of {batch}; the model's batch axis stays dynamic")
        if not result.stats.get("removed"):
            message = "prune-channels removed nothing: " + _why_nothing(result.stats, self._analysis)
            logger.warning(message)
            result.log.insert(0, message)
        return result

    def _prune(self, model: Model, ctx: PassContext) -> PassResult:
        analysis = self._analysis = channel_groups(model, norms=self.norms)
        log = [f"group {g.index} ({', '.join(g.sources)[:60]}) excluded: {g.reason}"
               for g in analysis.groups if g.excluded]
        protected = self._protected(analysis)
        if not analysis.prunable_groups:
            return PassResult(changed=False, stats={**analysis.summary(), "removed": 0}, log=log)
        scores, notes = unit_scores(model, analysis, self.criterion, data=ctx.data, seed=ctx.seed,
                                    samples=self.samples)
        log += notes
        cost = compute_cost(model)
        if self.flops_target is not None:
            estimator = _FlopsEstimator(model, analysis, cost)
            removed, reached = self._for_flops(analysis, scores, protected, estimator, cost.flops)
            if reached > self.flops_target * cost.flops * 1.0001:
                log.append(f"flops_target={self.flops_target} not reachable under the constraints; "
                           f"pruned to an estimated {reached / cost.flops:.3f}")
        else:
            removed = select_units(analysis, scores, ratio=self.ratio, scope=self.scope,
                                   round_to=self.round_to, min_channels=self.min_channels,
                                   protected=protected)
        if not removed:
            return PassResult(changed=False, stats={**analysis.summary(), "removed": 0}, log=log)
        flops_before, params_before = cost.flops, cost.params
        records = remove_channels(model, analysis, removed, criterion=self.criterion)
        model.annotations.pruning.extend(records)
        after = compute_cost(model)
        stats = {
            **analysis.summary(),
            "removed": len(removed),
            "flops_before": flops_before,
            "flops_after": after.flops,
            "flops_ratio": round(after.flops / flops_before, 4) if flops_before else None,
            "params_before": params_before,
            "params_after": after.params,
            "layers": {r.layer: [r.channels_before, r.channels_after] for r in records},
        }
        return PassResult(changed=True, stats=stats, log=log)

    _analysis: ChannelGroups | None = None

    def _check_options(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise PipelineError(f"prune-channels: ratio={self.ratio} must be in [0, 1)")
        if self.flops_target is not None and not 0.0 < self.flops_target <= 1.0:
            raise PipelineError(f"prune-channels: flops_target={self.flops_target} must be in (0, 1]",
                                hint="it is the fraction of FLOPs to keep, e.g. 0.5")
        if self.round_to < 1 or self.min_channels < 1 or self.samples < 1:
            raise PipelineError("prune-channels: round_to, min_channels and samples must be at least 1")
        if self.keep:
            try:
                re.compile(self.keep)
            except re.error as exc:
                raise PipelineError(f"prune-channels: keep='{self.keep}' is not a valid regex: {exc}") from None

    def _protected(self, analysis: ChannelGroups) -> set[int]:
        if not self.keep:
            return set()
        pattern = re.compile(self.keep)
        return {g.index for g in analysis.groups if any(pattern.search(s) for s in g.sources)}

    def _for_flops(self, analysis, scores, protected, estimator, total) -> tuple[set[int], float]:
        """The smallest ratio whose (estimated) FLOPs meet the target, by bisection."""
        target = self.flops_target * total

        def removal(ratio: float) -> set[int]:
            return select_units(analysis, scores, ratio=ratio, scope=self.scope, round_to=self.round_to,
                                min_channels=self.min_channels, protected=protected)

        best = removal(0.999)
        best_flops = estimator(best)
        if best_flops > target:
            return best, best_flops
        low, high = 0.0, 0.999
        for _ in range(24):
            mid = (low + high) / 2
            candidate = removal(mid)
            flops = estimator(candidate)
            if flops <= target:
                high, best, best_flops = mid, candidate, flops
            else:
                low = mid
        return best, best_flops


def _prepare(model: Model, ctx: PassContext) -> dict[str, int]:
    """Make the model prunable with the cleanup passes (all semantics-preserving): computed
    Reshape targets and Constant weights would otherwise pin channels."""
    done = {}
    for step in (ConstantsToInitializers(), FoldConstants(), RemoveIdentity()):
        if step.run(model, ctx).changed:
            model.invalidate()
            model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            done[f"prepared_{step.name}"] = 1
    return done


def _why_nothing(stats: dict, analysis: ChannelGroups | None) -> str:
    """The reasons, for the warning: why each group was excluded, or which limits kept the rest."""
    if analysis is None or not analysis.groups:
        return "the model has no prunable producers (Conv, ConvTranspose, Gemm or MatMul with constant weights)"
    excluded = Counter(g.reason for g in analysis.groups if g.excluded)
    parts = [f"{n} group(s) excluded because {reason}" for reason, n in excluded.most_common(3)]
    if len(excluded) > 3:
        parts.append(f"{sum(excluded.values()) - sum(n for _, n in excluded.most_common(3))} more excluded")
    if analysis.prunable_groups:
        parts.append(f"{len(analysis.prunable_groups)} prunable group(s) kept every channel under "
                     "ratio/flops_target, min_channels, round_to and keep")
    return "; ".join(parts) + " (see `presso inspect --prunable`)"


def select_units(analysis: ChannelGroups, scores: dict[int, float], *, ratio: float, scope: str,
                 round_to: int, min_channels: int, protected: set[int] = frozenset()) -> set[int]:
    """The units (roots) to remove under the constraints, lowest scores first."""
    candidates = {}
    for g in analysis.groups:
        if g.index in protected or not g.prunable:
            continue
        order = sorted(g.prunable, key=lambda u: (scores.get(u, 0.0), u))
        candidates[g.index] = (g, order)
    if scope == "layer":
        wanted = {i: math.floor(ratio * g.channels + 1e-9) for i, (g, _) in candidates.items()}
    else:
        ranked = []
        for i, (g, order) in candidates.items():
            values = np.array([scores.get(u, 0.0) for u in order], dtype=np.float64)
            mean = values.mean() if values.size else 0.0
            normalized = values / mean if mean > 0 else values
            ranked.extend((float(v), i, k) for k, v in enumerate(normalized))
        total = sum(g.channels for g, _ in candidates.values())
        count = math.floor(ratio * total + 1e-9)
        wanted = dict.fromkeys(candidates, 0)
        for _, i, _k in sorted(ranked)[:count]:
            wanted[i] += 1
    removed: set[int] = set()
    carriers = _CarrierGuard(analysis)
    for i, (g, order) in candidates.items():
        n = g.channels
        floor = max(min_channels, 1)
        if n <= floor:
            continue
        take = min(wanted[i], len(order), n - floor)
        picked = carriers.pick(order, take)  # lowest scores first, never emptying a tensor
        kept = n - len(picked)
        if round_to > 1:
            kept = min(n, math.ceil(kept / round_to) * round_to)
        carriers.release(picked[n - kept:])
        removed.update(picked[:n - kept])
    return removed


class _CarrierGuard:
    """Keeps at least one unit of every tensor that carries pruned channels.

    ``min_channels`` and ``round_to`` count a group's units, but one tensor may hold only some
    of them (a producer whose channels are added to zero padding or to a wider producer's):
    removing all of those would leave it with zero channels. Counts the units each carrier
    (:attr:`ChannelGroups.carriers`) still has, across groups.
    """

    def __init__(self, analysis: ChannelGroups):
        self.left: list[int] = []
        self.of_unit: dict[int, list[int]] = {}
        for k, units in enumerate(analysis.carriers):
            self.left.append(len(units))
            for u in units.tolist():
                self.of_unit.setdefault(u, []).append(k)

    def pick(self, order: list[int], count: int) -> list[int]:
        """Up to ``count`` units of ``order``, in order, skipping any whose removal would
        empty a carrier; their removal is counted."""
        picked = []
        for u in order:
            if len(picked) >= count:
                break
            carriers = self.of_unit.get(u, ())
            if any(self.left[k] <= 1 for k in carriers):
                continue
            for k in carriers:
                self.left[k] -= 1
            picked.append(u)
        return picked

    def release(self, units: list[int]) -> None:
        """Undo :meth:`pick` for ``units`` (they stay after all)."""
        for u in units:
            for k in self.of_unit.get(u, ()):
                self.left[k] += 1


class _FlopsEstimator:
    """FLOPs of the model after removing units, from each node's cost and kept fractions.

    A node's FLOPs scale with the kept fraction of its output channels and of the input
    channels it reduces over (a conv's input columns, a Gemm's K); pooling and reductions
    scale with their input. Exact for the linear ops up to their bias term.
    """

    def __init__(self, model: Model, analysis: ChannelGroups, cost):
        self.size = len(analysis.roots)
        in_slices = {id(p.node): p.ids for p in analysis.params if p.role == "in"}
        self.terms = []
        for node, node_cost in zip(model.graph.nodes, cost.nodes):
            if not node_cost.flops:
                continue
            out_map = analysis.maps.get(node.outputs[0].name) if node.outputs else None
            in_map = analysis.maps.get(node.inputs[0].name) if node.inputs else None
            if node.op in ("ConvTranspose", "GlobalAveragePool", "GlobalMaxPool") or node.op.startswith("Reduce"):
                factors = [m.ids for m in (in_map, out_map if node.op == "ConvTranspose" else None) if m]
            else:
                factors = [ids for ids in (out_map.ids if out_map else None, in_slices.get(id(node)))
                           if ids is not None]
            roots = [analysis.root(ids) for ids in factors]
            self.terms.append((float(node_cost.flops), [r[r >= 0] for r in roots], [len(r) for r in roots]))

    def __call__(self, removed: set[int]) -> float:
        dead = np.zeros(self.size, dtype=bool)
        if removed:
            dead[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
        total = 0.0
        for flops, roots, sizes in self.terms:
            for r, n in zip(roots, sizes):
                flops *= (n - int(dead[r].sum())) / n if n else 1.0
            total += flops
        return total
