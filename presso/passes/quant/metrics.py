"""Task metrics: how well a candidate model's outputs follow a reference model's, by name.

``get_metric("top1" | "iou" | "cosine" | "nn" | "mse" | "sqnr" | callable)`` returns a
:class:`Metric`: ``metric(reference_outputs, candidate_outputs) -> float`` over per-sample
lists of output dicts (what :func:`model_outputs` and ``ir.evaluate`` return), whether higher
is better, the score of a perfect candidate, and ``drop(reference_score, score)`` — how much
worse a score is, positive when worse, in either direction. :func:`model_outputs` runs a model
over data; :func:`score_models` scores one model against another on the same data.

Built on ``passes.verify`` (SQNR, cosine, top-1, nearest-neighbour agreement); used by
sensitivity analysis, mixed precision and recipe search. Reads outputs only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...ir import DataSource, Model, evaluate
from ...ir.errors import PressoError
from ..verify import metrics, nn_agreement, top1_agreement

Outputs = Mapping[str, np.ndarray]
ScoreFunction = Callable[[Sequence[Outputs], Sequence[Outputs]], float]
# rapidocr's DBNet post-processing binarizes the probability map at 0.3 (its `thresh`).
IOU_THRESHOLD = 0.3
_SQNR_CAP_DB = 100.0  # a sample reproduced exactly counts as this much, so means stay finite


@dataclass(frozen=True)
class Metric:
    """A named score of candidate outputs against reference outputs.

    ``perfect`` is the score of the reference against itself (1 for agreements, 0 for mse);
    ``None`` for a callable whose perfect score is not known: :meth:`reference_score` then
    measures it.
    """

    name: str
    function: ScoreFunction
    higher_is_better: bool = True
    perfect: float | None = None
    description: str = ""

    def __call__(self, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
        if len(reference) != len(candidate):
            raise PressoError(f"metric '{self.name}': {len(reference)} reference samples but {len(candidate)} "
                              "candidate samples", hint="score both models on the same data")
        return float(self.function(reference, candidate))

    def reference_score(self, reference: Sequence[Outputs]) -> float:
        """The score the reference model gets against itself."""
        return self.perfect if self.perfect is not None else self(reference, reference)

    def drop(self, reference_score: float, score: float) -> float:
        """How much worse ``score`` is than ``reference_score`` (positive: worse)."""
        return reference_score - score if self.higher_is_better else score - reference_score

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b


def _pairs(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> Iterable[tuple[str, Any, Any]]:
    for ref, cand in zip(reference, candidate, strict=True):
        for name, ref_value in ref.items():
            if name not in cand:
                raise PressoError(f"the candidate has no output '{name}'", where=f"output '{name}'",
                                  hint="compare models with the same outputs")
            yield name, ref_value, cand[name]


def top1(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
    """Share of rows whose argmax (last axis) agrees. Over the outputs that hold probability
    vectors (softmax) when there are any, else over every output whose last axis has ≥ 2 classes."""
    pairs = list(_pairs(reference, candidate))
    score = top1_agreement(pairs)
    if score is not None:
        return score
    hits = total = 0
    for _, ref_value, cand_value in pairs:
        ref_value = np.asarray(ref_value)
        if ref_value.ndim >= 1 and ref_value.shape[-1] >= 2 and ref_value.dtype.kind == "f":
            hits += int(np.sum(np.argmax(ref_value, axis=-1) == np.argmax(np.asarray(cand_value), axis=-1)))
            total += int(np.prod(ref_value.shape[:-1]))
    if not total:
        raise PressoError("metric 'top1' needs a float output with at least 2 classes on its last axis",
                          hint="use metric=cosine, sqnr or mse for other outputs")
    return hits / total


def iou(reference: Sequence[Outputs], candidate: Sequence[Outputs], *, threshold: float = IOU_THRESHOLD) -> float:
    """IoU of the masks ``value > threshold`` over all samples and outputs (1 when both are empty)."""
    inter = union = 0
    for _, ref_value, cand_value in _pairs(reference, candidate):
        ref_mask, cand_mask = np.asarray(ref_value) > threshold, np.asarray(cand_value) > threshold
        inter += int(np.logical_and(ref_mask, cand_mask).sum())
        union += int(np.logical_or(ref_mask, cand_mask).sum())
    return inter / union if union else 1.0


def cosine(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
    """Mean over samples and outputs of the cosine similarity of candidate and reference."""
    values = [metrics(np.asarray(r), np.asarray(c)).cosine for _, r, c in _pairs(reference, candidate)]
    return float(np.mean(values)) if values else 1.0


def sqnr(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
    """Mean over samples and outputs of the SQNR in dB (capped at 100 dB per sample)."""
    values = [min(metrics(np.asarray(r), np.asarray(c)).sqnr_db, _SQNR_CAP_DB) for _, r, c in _pairs(reference, candidate)]
    return float(np.mean(values)) if values else _SQNR_CAP_DB


def mse(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
    """Mean squared error over every value of every output of every sample."""
    total = count = 0.0
    for name, ref_value, cand_value in _pairs(reference, candidate):
        ref_value = np.asarray(ref_value, dtype=np.float64)
        cand_value = np.asarray(cand_value, dtype=np.float64)
        if ref_value.shape != cand_value.shape:
            raise PressoError(f"output '{name}' changed shape from {ref_value.shape} to {cand_value.shape}")
        total += float(np.sum((ref_value - cand_value) ** 2))
        count += ref_value.size
    return total / count if count else 0.0


def nn(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
    """Nearest-neighbour agreement (``verify.nn_agreement``) of each output's rows over all
    samples (each sample's output flattened per item of its batch), averaged over outputs."""
    names = list(reference[0]) if reference else []
    scores = []
    for name in names:
        ref_rows = np.concatenate([_rows(r[name]) for r in reference])
        cand_rows = np.concatenate([_rows(c[name]) for c in candidate])
        if ref_rows.shape[0] < 2:
            raise PressoError(f"metric 'nn' needs at least 2 items, output '{name}' has {ref_rows.shape[0]}",
                              hint="score on more samples")
        scores.append(nn_agreement(ref_rows, cand_rows))
    return float(np.mean(scores)) if scores else 1.0


def _rows(value: Any) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    return value.reshape(1, -1) if value.ndim <= 1 else value.reshape(value.shape[0], -1)


METRICS: dict[str, Metric] = {
    metric.name: metric for metric in (
        Metric("top1", top1, True, 1.0, "top-1 agreement with the reference (argmax of the last axis)"),
        Metric("iou", iou, True, 1.0, f"IoU of the masks value > {IOU_THRESHOLD} (rapidocr det's threshold)"),
        Metric("cosine", cosine, True, 1.0, "mean cosine similarity to the reference per sample and output"),
        Metric("nn", nn, True, 1.0, "nearest-neighbour agreement of the output rows over all samples"),
        Metric("mse", mse, False, 0.0, "mean squared error against the reference"),
        Metric("sqnr", sqnr, True, None, "mean SQNR in dB per sample and output (capped at 100 dB)"),
    )
}


def get_metric(metric: str | Metric | ScoreFunction) -> Metric:
    """A :class:`Metric` by name (``top1``, ``iou``, ``cosine``, ``nn``, ``mse``, ``sqnr``), a
    Metric as is, or a callable ``f(reference_outputs, candidate_outputs) -> float`` (higher is
    better unless it has an attribute ``higher_is_better = False``)."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric,
                      bool(getattr(metric, "higher_is_better", True)), None, "user-supplied metric")
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise PressoError(f"unknown metric {metric!r}", hint=f"use one of {', '.join(METRICS)} or a Python callable "
                      "f(reference_outputs, candidate_outputs) -> float")


def model_outputs(model: Model, data: Any, *, samples: int | None = None, skip: int = 0,
                  batch: int | None = None, threads: int | None = 1, optimization: str = "all") -> list[dict]:
    """The graph outputs of ``model`` on ``data``: one dict per fed batch (``batch`` samples,
    default the model's own batch or 1), ``samples`` samples at most after skipping ``skip``.

    ``optimization="all"`` by default: quantized models are scored as onnxruntime runs them
    for deployment, with its fused int8 kernels.
    """
    source = DataSource.open(data, model)
    feeds = source.feeds(batch=batch, limit=None if samples is None else samples + skip)
    outputs, seen = [], 0
    for feed in feeds:
        count = len(next(iter(feed.values())))
        if seen >= skip:
            outputs.append(evaluate(model, feed, optimization=optimization, threads=threads))
        seen += count
    return outputs


def score_models(reference: Model | Sequence[Outputs], candidate: Model, data: Any, metric: Any = "top1",
                 **options: Any) -> float:
    """``metric`` of ``candidate``'s outputs against ``reference``'s (a model, or its outputs
    on the same data) on ``data``; ``options`` go to :func:`model_outputs`."""
    metric = get_metric(metric)
    ref = model_outputs(reference, data, **options) if isinstance(reference, Model) else reference
    return metric(ref, model_outputs(candidate, data, **options))


__all__ = ["IOU_THRESHOLD", "METRICS", "Metric", "cosine", "get_metric", "iou", "model_outputs", "mse", "nn",
           "score_models", "sqnr", "top1"]
