"""Per-layer sensitivity of a model to int8 quantization, measured on data.

For every quantized layer (``layer_precision.layers``): the task-metric drop and the output
SQNR when *only that layer* is quantized (how much it costs by itself), and when *only it* is
left float (how much the int8 model gains back from it); its weight range and activation
range (observed on the data and as calibrated), with an outlier ratio (max |x| over the
99.9th percentile of |x|: 1 for a flat distribution, large when a few values stretch the
grid). The quantized models are run by onnxruntime with all graph optimizations (its fused
int8 kernels), as deployed.

``sensitivity(model, data, metric=...)`` quantizes the model as ``presso.quantize`` does
(insert-qdq → calibrate → bias-correction), measures, and caches the result as JSON under
``presso.ir.cache.cache_dir()/sensitivity``, keyed by the model's bytes, the data's bytes and the
options: a repeated run reads the file. Reads the model; never modifies it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...ir import DataSource, Model, evaluate, load
from ...ir.io import atomic_write_bytes
from ...ir.table import format_table
from ..progress import progress_bar
from ..verify import compare_outputs
from . import layer_precision as lp
from .metrics import get_metric, model_outputs
from .qdq import qparams
from .qmath import dequantize, qrange

CACHE_VERSION = 1
_SQNR_CAP_DB = 100.0


@dataclass
class LayerSensitivity:
    """One layer's numbers (drops are in the metric's units, positive = worse)."""

    name: str
    op: str
    only_quantized_drop: float | None = None
    only_quantized_sqnr: float | None = None
    only_float_drop: float | None = None
    only_float_sqnr: float | None = None
    weight_range: tuple[float, float] | None = None
    weight_outlier: float | None = None
    activation_range: tuple[float, float] | None = None  # observed on the data (float model)
    activation_outlier: float | None = None
    calibrated_range: tuple[float, float] | None = None  # what the int8 grid covers

    def rank_key(self) -> tuple[float, float]:
        """Most sensitive first: largest drop alone, then lowest SQNR alone."""
        return (-(self.only_quantized_drop or 0.0), self.only_quantized_sqnr if self.only_quantized_sqnr is not None
                else _SQNR_CAP_DB)


@dataclass
class SensitivityReport:
    """Per-layer sensitivity plus the whole model's float and int8 scores."""

    metric: str
    higher_is_better: bool
    reference_score: float
    int8_score: float
    int8_sqnr: float
    samples: int
    layers: list[LayerSensitivity] = field(default_factory=list)
    cached: bool = False

    @property
    def int8_drop(self) -> float:
        return self.reference_score - self.int8_score if self.higher_is_better else self.int8_score - self.reference_score

    def ranked(self) -> list[LayerSensitivity]:
        return sorted(self.layers, key=LayerSensitivity.rank_key)

    def table(self, limit: int | None = None) -> str:
        """The layers, most sensitive first (``limit`` rows at most)."""
        def number(value, digits=4):
            return "-" if value is None else f"{value:.{digits}f}"

        def span(pair):
            return "-" if pair is None else f"[{pair[0]:.3g}, {pair[1]:.3g}]"

        rows = [(layer.name, layer.op, number(layer.only_quantized_drop), number(layer.only_quantized_sqnr, 1),
                 number(layer.only_float_drop), number(layer.only_float_sqnr, 1), span(layer.weight_range),
                 number(layer.weight_outlier, 1), span(layer.activation_range), number(layer.activation_outlier, 1),
                 span(layer.calibrated_range))
                for layer in self.ranked()[:limit]]
        headers = ("layer", "op", f"{self.metric} drop alone", "SQNR alone dB", f"{self.metric} drop, rest int8",
                   "SQNR rest int8 dB", "weight range", "w outlier", "activation range", "a outlier",
                   "calibrated range")
        head = (f"metric {self.metric} on {self.samples} samples: float {self.reference_score:.4f}, int8 "
                f"{self.int8_score:.4f} (drop {self.int8_drop:.4f}, output SQNR {self.int8_sqnr:.1f} dB)"
                + (" [cached]" if self.cached else ""))
        return head + "\n" + format_table(headers, rows, align="llrrrrlrlrl")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SensitivityReport:
        layers = [LayerSensitivity(**{k: tuple(v) if isinstance(v, list) else v for k, v in layer.items()})
                  for layer in values.get("layers", [])]
        return cls(**{**values, "layers": layers})


def _sqnr(reference: Sequence[dict], candidate: Sequence[dict]) -> float:
    return min(compare_outputs(reference, candidate).sqnr_db, _SQNR_CAP_DB)


def measure(quantized: Model, reference: Model, data: Any, metric: Any = "top1", *, samples: int | None = 32,
            only_float: bool = True, progress: bool = True, reference_outputs: list | None = None,
            layers: Sequence[str] | None = None) -> SensitivityReport:
    """Per-layer drop and SQNR of a calibrated Q/DQ model (before ``fold-qdq``) against its
    float ``reference`` (``layer_precision.float_reference``) on ``samples`` samples of ``data``.
    ``only_float=False`` skips the second column (half the runs); ``layers`` (names or regular
    expressions) limits the layers measured."""
    metric = get_metric(metric)
    ref_out = reference_outputs if reference_outputs is not None else model_outputs(reference, data, samples=samples)
    ref_score = metric.reference_score(ref_out)
    int8_out = model_outputs(quantized, data, samples=samples)
    report = SensitivityReport(metric.name, metric.higher_is_better, ref_score, metric(ref_out, int8_out),
                               _sqnr(ref_out, int8_out), len(ref_out))
    nodes = select_layers(lp.layers(quantized), layers)
    bar = progress_bar(progress, len(nodes) * (2 if only_float else 1), "sensitivity", unit="run")
    try:
        for node in nodes:
            row = LayerSensitivity(node.name, node.op)
            edits = [("only_quantized", lambda m, n=node.name: lp.quantize_only(m, n, reference))]
            if only_float:
                edits.append(("only_float", lambda m, n=node.name: lp.leave_float(m, [n], reference=reference)))
            for column, edit in edits:
                candidate = quantized.copy()
                edit(candidate)
                out = model_outputs(candidate, data, samples=samples)
                setattr(row, f"{column}_drop", metric.drop(ref_score, metric(ref_out, out)))
                setattr(row, f"{column}_sqnr", _sqnr(ref_out, out))
                if bar is not None:
                    bar.update(1)
            report.layers.append(row)
    finally:
        if bar is not None:
            bar.close()
    return report


def select_layers(nodes: list, patterns: Sequence[str] | None) -> list:
    """The nodes whose name equals or fully matches one of ``patterns`` (all when None)."""
    if patterns is None:
        return nodes
    compiled = [re.compile(p) for p in patterns]
    return [n for n in nodes if n.name in patterns or any(c.fullmatch(n.name) for c in compiled)]


def add_ranges(report: SensitivityReport, quantized: Model, reference: Model, data: Any, *,
               samples: int | None = 32) -> None:
    """Fill in each layer's weight, activation and calibrated ranges and outlier ratios."""
    by_name = {node.name: node for node in lp.layers(quantized)}
    sources = {name: lp.activation_sources(node) for name, node in by_name.items()}
    wanted = sorted({s for names in sources.values() for s in names if s in reference.graph.tensors()})
    stats: dict[str, list[float]] = {}
    for feed in DataSource.open(data, reference).feeds(limit=samples):
        values = evaluate(reference, feed, wanted) if wanted else {}
        for name, value in values.items():
            flat = np.abs(np.asarray(value, dtype=np.float64).ravel())
            low, high = float(np.min(value)), float(np.max(value))
            p999 = float(np.percentile(flat, 99.9)) if flat.size else 0.0
            old = stats.get(name)
            stats[name] = [low, high, p999] if old is None else [min(old[0], low), max(old[1], high), old[2] + p999]
    count = max(1, min(report.samples, samples or report.samples))
    for row in report.layers:
        node = by_name.get(row.name)
        if node is None:
            continue
        weight = lp.weight_of(node)
        if weight is not None and weight.size:
            row.weight_range = (float(weight.min()), float(weight.max()))
            row.weight_outlier = _outlier(np.max(np.abs(weight)), np.percentile(np.abs(weight), 99.9))
        seen = [stats[s] for s in sources[row.name] if s in stats]
        if seen:
            row.activation_range = (min(s[0] for s in seen), max(s[1] for s in seen))
            row.activation_outlier = max(_outlier(max(abs(s[0]), abs(s[1])), s[2] / count) for s in seen)
        row.calibrated_range = _calibrated_range(node)


def _outlier(peak: float, typical: float) -> float:
    return float(peak / typical) if typical > 0 else (1.0 if peak == 0 else float("inf"))


def _calibrated_range(node) -> tuple[float, float] | None:
    lows, highs = [], []
    for tensor in node.inputs:
        dq = lp._dq_of(tensor)
        if dq is None or not lp.is_activation_dq(dq):
            continue
        params = qparams(dq)
        if params is None:
            continue
        low, high = qrange(np.asarray(params.zero_point.values).dtype.name)
        ends = dequantize(np.array([low, high]), params.scale.values, params.zero_point.values, None)
        lows.append(float(np.min(ends)))
        highs.append(float(np.max(ends)))
    return (min(lows), max(highs)) if lows else None


# ---- the public entry point with its cache -------------------------------------------------------
def sensitivity(model: Model | str | os.PathLike, data: Any, *, metric: Any = "top1", samples: int = 32,
                eval_data: Any = None, method: str = "auto", target: Any = "cpu-x86", only_float: bool = True,
                ranges: bool = True, layers: Sequence[str] | None = None, cache: bool | str | os.PathLike = True,
                progress: bool = True, **insert_options: Any) -> SensitivityReport:
    """Per-layer int8 sensitivity of ``model`` (see the module docstring).

    The model is quantized as ``presso.quantize`` does (``method``, ``target``, and
    ``insert_options`` for ``insert-qdq``) with ``data`` as calibration data; the layers are
    scored on ``samples`` samples of ``eval_data`` (default: ``data``) with ``metric`` (a name
    from ``metrics.METRICS`` or a callable); ``layers`` (names or regexes) limits the layers
    measured. ``cache``: True (``presso.ir.cache.cache_dir()/sensitivity``),
    a folder, or False. A callable metric is cached by its qualified name.
    """
    metric_obj = get_metric(metric)
    model = load(model) if isinstance(model, (str, os.PathLike)) else model
    eval_data = data if eval_data is None else eval_data
    folder = _cache_folder(cache)
    key = None
    if folder is not None:
        options = {"metric": metric_obj.name, "samples": samples, "method": method, "target": str(target),
                   "only_float": only_float, "ranges": ranges, "layers": list(layers or []), "insert": {k: str(v) for k, v in insert_options.items()},
                   "version": CACHE_VERSION}
        key = _cache_key(model, data, eval_data, samples, options)
        path = folder / f"{key}.json"
        if path.is_file():
            try:
                report = SensitivityReport.from_dict(json.loads(path.read_text()))
                report.cached = True
                return report
            except (ValueError, TypeError, KeyError):
                pass  # an unreadable entry is measured again and overwritten
    quantized, reference = quantize_for_analysis(model, data, method=method, target=target, progress=progress,
                                                 **insert_options)
    report = measure(quantized, reference, eval_data, metric_obj, samples=samples, only_float=only_float,
                     progress=progress, layers=layers)
    if ranges:
        add_ranges(report, quantized, reference, eval_data, samples=samples)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / f"{key}.json", json.dumps(report.to_dict(), indent=1).encode())
    return report


def quantize_for_analysis(model: Model, data: Any, *, method: str = "auto", target: Any = "cpu-x86",
                          progress: bool = False, **insert_options: Any) -> tuple[Model, Model]:
    """(calibrated Q/DQ model before fold-qdq, its float reference with the same node names)."""
    from ...api import quantize

    quantized = quantize(model, data, method=method, target=target, fold=False, progress=progress, **insert_options)
    reference = lp.float_reference(model, **{k: v for k, v in insert_options.items() if k != "exclude"})
    return quantized, reference


def _cache_folder(cache: bool | str | os.PathLike) -> Path | None:
    if cache is False or cache is None:
        return None
    if cache is True:
        from ...ir.cache import cache_dir

        return cache_dir() / "sensitivity"
    return Path(cache)


def _cache_key(model: Model, data: Any, eval_data: Any, samples: int, options: dict) -> str:
    digest = hashlib.sha256()
    digest.update(model_fingerprint(model).encode())
    for source, limit in ((data, None), (eval_data, samples)):
        for feed in DataSource.open(source, model).feeds(limit=limit):
            for name in sorted(feed):
                value = np.ascontiguousarray(feed[name])
                digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
                digest.update(value.tobytes())
        digest.update(b"|")
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def model_fingerprint(model: Model) -> str:
    """A hash of the graph's content (ops, names, attributes, constant values), independent
    of how the proto stores them (raw_data or float_data)."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if hasattr(value, "values") and not isinstance(value, dict):
            array = np.ascontiguousarray(np.asarray(value.values))
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        elif isinstance(value, np.ndarray):
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        else:
            digest.update(repr(value).encode())

    digest.update(f"opset {model.opset}".encode())
    for node in model.graph.nodes:
        digest.update(f"{node.op}|{node.domain}|{node.name}|{[t.name for t in node.inputs]}|"
                      f"{[t.name for t in node.outputs]}".encode())
        for key in sorted(node.attrs):
            digest.update(key.encode())
            feed(node.attrs[key])
    for name, tensor in sorted(model.graph.tensors().items()):
        if hasattr(tensor, "values"):
            digest.update(name.encode())
            feed(tensor)
    digest.update(f"{[t.name for t in model.graph.inputs]}{[t.name for t in model.graph.outputs]}".encode())
    return digest.hexdigest()


__all__ = ["LayerSensitivity", "SensitivityReport", "add_ranges", "measure", "quantize_for_analysis", "sensitivity"]


def cli_sensitivity(model: Model, args: Any) -> dict:
    """``presso inspect --sensitivity``: the report as a dict (``SensitivityReport.from_dict``)."""
    from ...ir.errors import PressoError

    if not args.data:
        raise PressoError("--sensitivity needs --data", hint="give calibration data, e.g. --data calib.npz "
                          "(one array per model input, leading sample axis)")
    report = sensitivity(model, args.data, metric=args.metric, samples=args.samples, cache=not args.no_cache,
                         progress=not getattr(args, "quiet", False))
    return report.to_dict()
