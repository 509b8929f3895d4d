"""Importance criteria for channel units: L1, L2, BN-gamma, first-order Taylor, random.

The score of a unit sums the scores of its members (every parameter slice that belongs to it:
the producers' output filters, the consumers' input columns, biases, normalization scales),
as Torch-Pruning's group importance does. Scores are returned per union-find root.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from ...ir import Model
from ...ir.errors import PassError, PressoError
from .dependency import FIXED, ChannelGroups

WEIGHT_ROLES = ("out", "in")


def unit_scores(model: Model, analysis: ChannelGroups, criterion: str, *, data: Any = None,
                seed: int = 0, samples: int = 8) -> tuple[dict[int, float], list[str]]:
    """(score per unit root, notes). Lower scores are removed first."""
    notes: list[str] = []
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return {u: float(rng.random()) for g in analysis.groups for u in g.units}, notes
    if criterion in ("l1", "l2"):
        return _magnitude(analysis, criterion, WEIGHT_ROLES), notes
    if criterion == "bn-gamma":
        gamma = _magnitude(analysis, "l1", ("gamma",))
        l1 = _magnitude(analysis, "l1", WEIGHT_ROLES)
        scores = {}
        for g in analysis.groups:
            if any(u in gamma for u in g.units):
                scores.update({u: gamma.get(u, 0.0) for u in g.units})
            else:  # no normalization layer in this group: fall back to the weights' L1 norm
                scores.update({u: l1.get(u, 0.0) for u in g.units})
                if g.prunable:
                    notes.append(f"group {g.index} ({g.sources[0]}) has no BatchNormalization; scored by L1")
        return scores, notes
    if criterion == "taylor":
        return _taylor(model, analysis, data, samples), notes
    raise PassError(f"unknown pruning criterion '{criterion}'", hint="use l1, l2, bn-gamma, taylor or random")


def _accumulate(analysis: ChannelGroups, roles: tuple[str, ...], per_position) -> dict[int, float]:
    """Sum ``per_position(slice) → array`` into unit roots over the slices with ``roles``."""
    total: dict[int, float] = defaultdict(float)
    for p in analysis.params:
        if p.role not in roles:
            continue
        values = per_position(p)
        if values is None:
            continue
        roots = analysis.root(p.ids)
        for r, v in zip(roots.tolist(), values.tolist()):
            if r != FIXED:
                total[r] += float(v)
    return dict(total)


def _magnitude(analysis: ChannelGroups, norm: str, roles: tuple[str, ...]) -> dict[int, float]:
    def per_position(p):
        w = np.asarray(p.node.inputs[p.input_index].values, dtype=np.float64)
        if w.ndim == 0:
            return None
        w = np.moveaxis(w, p.axis, 0).reshape(w.shape[p.axis], -1)
        return np.abs(w).sum(axis=1) if norm == "l1" else np.sqrt((w * w).sum(axis=1))

    return _accumulate(analysis, roles, per_position)


def _taylor(model: Model, analysis: ChannelGroups, data: Any, samples: int) -> dict[int, float]:
    """First-order Taylor importance |Σ w·∂L/∂w| per unit (Molchanov et al. 2019).

    L = ½·Σ‖y‖² over the model's outputs on the given data: how much the outputs depend on
    each unit. Needs data and the torch training executor (`presso[train]`).
    """
    if data is None:
        raise PassError("criterion=taylor needs data to compute gradients",
                        hint="give sample inputs (--data FILE.npz) or use criterion=l1")
    try:
        import torch

        from ..train.executor import GraphExecutor
    except ImportError as exc:
        raise PassError(f"criterion=taylor needs the training executor, which is not available ({exc})",
                        hint="install the `train` extra (pip install 'presso[train]') or use criterion=l1") from exc
    names = sorted({p.node.inputs[p.input_index].name for p in analysis.params if p.role in WEIGHT_ROLES})
    try:
        executor = GraphExecutor(model, trainable=names)
    except PressoError as exc:
        raise PassError(f"criterion=taylor cannot run the model in the training executor: {exc}",
                        hint="use criterion=l1, or simplify the graph first") from exc
    params = executor.trainable()
    grads: dict[str, np.ndarray] = {}
    feeds_iter = data.feeds(batch=1, limit=samples) if hasattr(data, "feeds") else iter(data)
    count = 0
    for feeds in feeds_iter:
        for p in params.values():
            p.grad = None
        outputs = executor(feeds)
        loss = sum(0.5 * (y.float() ** 2).sum() for y in outputs.values() if y.is_floating_point())
        loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                g = (p.detach() * p.grad).double().cpu().numpy()
                grads[name] = grads.get(name, 0) + g
        count += 1
    if not count:
        raise PassError("criterion=taylor got no samples from the data", hint="check the --data file")
    del torch

    def per_position(p):
        wg = grads.get(p.node.inputs[p.input_index].name)
        if wg is None or np.ndim(wg) == 0:
            return None
        wg = np.moveaxis(wg, p.axis, 0).reshape(wg.shape[p.axis], -1)
        return wg.sum(axis=1)

    signed = _accumulate(analysis, WEIGHT_ROLES, per_position)
    return {u: abs(v) for u, v in signed.items()}
