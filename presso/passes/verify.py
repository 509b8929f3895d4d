"""Numeric comparison of model outputs: the metrics every verification reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ..ir import Model
from .base import ErrorMetrics

Outputs = Mapping[str, np.ndarray]


def compare_outputs(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> ErrorMetrics:
    """Error of ``candidate`` against ``reference`` over every output of every sample."""
    ref_parts, cand_parts = [], []
    for ref, cand in zip(reference, candidate, strict=True):
        for name, ref_value in ref.items():
            cand_value = np.asarray(cand[name])
            if cand_value.shape != np.shape(ref_value):
                raise ValueError(f"output '{name}' changed shape from {np.shape(ref_value)} to {cand_value.shape}")
            ref_parts.append(np.asarray(ref_value, dtype=np.float64).ravel())
            cand_parts.append(cand_value.astype(np.float64).ravel())
    if not ref_parts:
        return ErrorMetrics(0.0, 0.0, float("inf"), 1.0, 0.0)
    ref_all = np.concatenate(ref_parts)
    cand_all = np.concatenate(cand_parts)
    return metrics(ref_all, cand_all)


def metrics(ref: np.ndarray, cand: np.ndarray) -> ErrorMetrics:
    ref = np.asarray(ref, dtype=np.float64).ravel()
    cand = np.asarray(cand, dtype=np.float64).ravel()
    both_nan = np.isnan(ref) & np.isnan(cand)
    diff = np.where(both_nan, 0.0, np.abs(ref - cand))
    diff = np.nan_to_num(diff, nan=np.inf)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    signal = float(np.sum(np.nan_to_num(ref) ** 2))
    noise = float(np.sum(diff**2))
    sqnr = float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal > 0 else float("-inf"))
    norm = np.linalg.norm(np.nan_to_num(ref)) * np.linalg.norm(np.nan_to_num(cand))
    cosine = float(np.dot(np.nan_to_num(ref), np.nan_to_num(cand)) / norm) if norm > 0 else float(max_abs == 0)
    scale = float(np.max(np.abs(np.nan_to_num(ref)))) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return ErrorMetrics(max_abs=max_abs, mean_abs=mean_abs, sqnr_db=sqnr, cosine=cosine, max_rel=max_rel)


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
    onnx.checker.check_model(proto)
