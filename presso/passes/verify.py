"""Numeric comparison of model outputs: the metrics every verification and ``presso bench``
reports (max and mean abs error, SQNR, cosine, max relative error, top-1 agreement), the
nearest-neighbour agreement of embeddings, a per-output tolerance check, and ``onnx.checker``
without weight data. Reads outputs only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from ..ir import Model
from .base import ErrorMetrics

Outputs = Mapping[str, np.ndarray]
# One output of one sample: (output name, reference value, candidate value).
OutputPair = tuple[str, Any, Any]


def compare_outputs(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> ErrorMetrics:
    """Error of ``candidate`` against ``reference`` over every output of every sample.

    Outputs are matched by name; ``ValueError`` when one changed shape.
    """
    return compare_pairs((name, ref_value, cand[name])
                         for ref, cand in zip(reference, candidate, strict=True)
                         for name, ref_value in ref.items())


def compare_pairs(pairs: Iterable[OutputPair]) -> ErrorMetrics:
    """:func:`metrics` over the concatenation of every pair; ``ValueError`` when a pair's
    candidate has another shape than its reference."""
    ref_parts, cand_parts = [], []
    for name, ref_value, cand_value in pairs:
        ref_value = np.asarray(ref_value, dtype=np.float64)
        cand_value = np.asarray(cand_value, dtype=np.float64)
        if cand_value.shape != ref_value.shape:
            raise ValueError(f"output '{name}' changed shape from {ref_value.shape} to {cand_value.shape}")
        ref_parts.append(ref_value.ravel())
        cand_parts.append(cand_value.ravel())
    if not ref_parts:
        return ErrorMetrics(0.0, 0.0, float("inf"), 1.0, 0.0)
    return metrics(np.concatenate(ref_parts), np.concatenate(cand_parts))


def metrics(ref: np.ndarray, cand: np.ndarray) -> ErrorMetrics:
    """Error of ``cand`` against ``ref``, both flattened to float64.

    Non-finite values: a position where both hold the same non-finite value (both NaN, or the
    same infinity) agrees; any other position with a non-finite value on either side is an
    infinite error. Cosine is over the positions where both are finite; the SQNR signal and
    the scale of ``max_rel`` are over the reference's finite values.
    """
    ref = np.asarray(ref, dtype=np.float64).ravel()
    cand = np.asarray(cand, dtype=np.float64).ravel()
    finite = np.isfinite(ref) & np.isfinite(cand)
    with np.errstate(invalid="ignore", divide="ignore"):  # inf − inf and log10(0) are handled below
        diff = np.abs(ref - cand)
        if finite.all():  # the usual case: no masked copies
            ref_finite, cand_finite, ref_values = ref, cand, ref
        else:
            same = (ref == cand) | (np.isnan(ref) & np.isnan(cand))
            diff = np.where(finite, diff, np.where(same, 0.0, np.inf))
            ref_finite, cand_finite, ref_values = ref[finite], cand[finite], ref[np.isfinite(ref)]
        max_abs = float(diff.max()) if diff.size else 0.0
        mean_abs = float(diff.mean()) if diff.size else 0.0
        signal = float(np.sum(ref_values**2))
        noise = float(np.sum(diff**2))
        sqnr = float("inf") if noise == 0 else (float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf"))
    norm = np.linalg.norm(ref_finite) * np.linalg.norm(cand_finite)
    cosine = float(np.dot(ref_finite, cand_finite) / norm) if norm > 0 else float(max_abs == 0)
    scale = float(np.max(np.abs(ref_values))) if ref_values.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return ErrorMetrics(max_abs=max_abs, mean_abs=mean_abs, sqnr_db=sqnr, cosine=cosine, max_rel=max_rel)


def is_distribution(values: np.ndarray, *, atol: float = 1e-3) -> bool:
    """True when ``values`` holds probability vectors along its last axis (non-negative,
    summing to 1, at least two classes), e.g. a softmax output."""
    values = np.asarray(values)
    if values.ndim < 1 or values.shape[-1] < 2 or values.size == 0 or not np.all(np.isfinite(values)):
        return False
    return bool(np.all(values >= -atol) and np.allclose(values.sum(axis=-1), 1.0, atol=atol * values.shape[-1]))


def top1_agreement(pairs: Iterable[OutputPair]) -> float | None:
    """Share of rows whose argmax over the last axis is the same in candidate and reference,
    over the pairs whose reference :func:`is_distribution`; ``None`` when none is."""
    hits = total = 0
    for _, ref_value, cand_value in pairs:
        ref_value = np.asarray(ref_value, dtype=np.float64)
        if is_distribution(ref_value):
            hits += int(np.sum(np.argmax(ref_value, axis=-1) == np.argmax(np.asarray(cand_value), axis=-1)))
            total += int(np.prod(ref_value.shape[:-1]))
    return hits / total if total else None


def nn_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Nearest-neighbour agreement of two embeddings of the same N items ([N, D] each, N ≥ 2).

    For every item, its nearest other item by cosine similarity under ``ref`` and under
    ``cand``; the result is the share of items for which the two are the same item. This is
    what a retrieval user sees change when the embedding model is compressed.
    """
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[0] < 2:
        raise ValueError(f"nn_agreement needs two [N ≥ 2, D] arrays of one shape, got {ref.shape} and {cand.shape}")

    def nearest(x: np.ndarray) -> np.ndarray:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        similarity = x @ x.T
        np.fill_diagonal(similarity, -np.inf)  # an item is not its own neighbour
        return np.argmax(similarity, axis=1)

    return float(np.mean(nearest(ref) == nearest(cand)))


def within_tolerance(reference: Sequence[Outputs], candidate: Sequence[Outputs], *,
                     rtol: float, atol: float) -> tuple[bool, str]:
    """Per output: max |a − b| ≤ atol + rtol · max |reference|. Returns (ok, worst output text)."""
    worst = ""
    worst_ratio = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        for name, ref_value in ref.items():
            r = np.asarray(ref_value, dtype=np.float64)
            c = np.asarray(cand[name], dtype=np.float64)
            if r.shape != c.shape:
                return False, f"output '{name}' changed shape from {r.shape} to {c.shape}"
            same_nan = np.isnan(r) == np.isnan(c)
            if not np.all(same_nan):
                return False, f"output '{name}' gained or lost NaN values"
            finite = ~np.isnan(r)
            if not np.any(finite):
                continue
            err = float(np.max(np.abs(r[finite] - c[finite])))
            bound = atol + rtol * float(np.max(np.abs(r[finite])))
            ratio = err / bound if bound > 0 else (0.0 if err == 0 else np.inf)
            if ratio > worst_ratio:
                worst_ratio = ratio
                worst = f"output '{name}': max abs diff {err:.3g} > allowed {bound:.3g}"
    return worst_ratio <= 1.0, worst


def check_model(model: Model) -> None:
    """``onnx.checker`` on the model, without exporting the data of large weights.

    Large initializers are checked as typed graph inputs (name, dtype, dims): the checker
    sees the same graph structure while hundreds of MB of weights are neither copied nor
    serialized. Raises ``onnx.checker.ValidationError``.
    """
    proto, omitted = model.to_proto_without_large_data()
    if omitted:
        kept = [t for t in proto.graph.initializer if t.name not in omitted]
        stubs = [t for t in proto.graph.initializer if t.name in omitted]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        for stub in stubs:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(stub.name, stub.data_type, stub.dims))
    onnx.checker.check_model(proto, full_check=True)
