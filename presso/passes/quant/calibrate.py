"""`calibrate`: set the scales and zero points of every Q/DQ pair from data and weights.

Step 2 of the quantization flow. Lossy (it sets how the model rounds). ``method=auto``
measures instead of assuming: the one streaming pass over the data yields the ranges of
several methods at once, and each candidate is scored by how closely the quantized model
follows the float model on held-out samples, run by onnxruntime with its int8 fusions on.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ...ir import DataSource, Model, QuantSpec, check_finite, create_session, evaluate
from ...ir.analysis.batch import feed_batch
from ...ir.subgraphs import bodies
from ...ir.edit import add_initializer, add_node, batch_names, is_graph_output, producer, set_constant
from ...ir.errors import CalibrationError, PassError
from ...ir.evaluate import check_feeds
from ..base import Pass, PassContext, PassResult
from ..progress import progress_bar, sample_count
from ..registry import register_pass
from .observers import RangeObserver
from .qdq import constant_quantizers, float_source, qdq_attrs, qparams, strip_qdq
from .qdq import small_list as _small
from .qmath import channel_range, compute_qparams, dequantize, qrange, quantize

Method = Literal["auto", "minmax", "percentile", "entropy", "mse", "mean-minmax"]
RANGE_METHODS = ("minmax", "percentile", "entropy", "mse", "mean-minmax")
# What `method=auto` compares when no `candidates` are given. Percentile 99.99 won on magika,
# 99.999 on PP-OCR cls, mse on PP-OCR det (benchmarks/quantization.py); entropy is left out:
# it came last or near last on all three and is the slowest range to compute (a KL search per
# tensor), so it is there only on request (candidates=[...,entropy]).
DEFAULT_CANDIDATES = ("minmax", "mean-minmax", "percentile:99.9", "percentile:99.99", "percentile:99.999", "mse")
# ctx.shared key under which calibrate leaves the float model's per-channel input means of the
# quantized Conv/Gemm layers, so that bias-correction needs no pass over the data of its own.
FLOAT_MEANS_KEY = "calibrate.float_channel_means"
_SQNR_CAP_DB = 100.0  # a sample reproduced exactly (or an all-zero one) counts as this much


@register_pass("calibrate")
class Calibrate(Pass):
    """Compute scales and zero points for the Q/DQ pairs that ``insert-qdq`` placed.

    Activations: ONE streaming pass over the data (``samples`` samples, ``batch`` per run)
    through ``ir.evaluate`` on the float version of the model, requesting every observed tensor
    at once; per tensor (or group of tensors sharing a scale) a running min/max, the mean of
    per-sample extremes and, when a method needs it, a fixed-size histogram — memory grows with
    the number of tensors, never with the number of samples. Methods: ``minmax``,
    ``percentile`` (``percentile`` option), ``entropy`` (KL, TensorRT), ``mse``, ``mean-minmax``
    (NNCF's default) and ``auto`` (the default, as in ``presso.quantize``). Tensors that feed a
    max-type reduction (MaxPool, GlobalMaxPool, ReduceMax, ArgMax, TopK) always use min/max:
    clipping them would clip the very values those ops select. Weights (and constant operands)
    get their scales from their values (per channel where the Q/DQ has an axis); Conv/Gemm
    biases marked int32 are stored as int32 with scale = input_scale × weight_scale.

    ``method=auto`` chooses by measurement. The same single pass yields the ranges of every
    ``candidates`` entry (default: minmax, mean-minmax, percentile:99.9, percentile:99.99,
    percentile:99.999, mse; entropy on request). Every ``1/holdout``-th sample (at most
    ``score_samples``) is kept out of the statistics, and each candidate is scored on those
    samples — or on up to ``score_samples`` of ``validation`` data when given — against the
    float model, run by onnxruntime with all graph optimizations (its fused int8 kernels, where
    accuracy is lost on CPUs), with int32 biases and, when ``bias_correction`` is true (a
    ``bias-correction`` pass follows, as in ``presso.quantize``), its corrections applied.
    Score: the mean over samples and outputs of the signal-to-quantization-noise ratio in dB
    (per sample, so that one outlier sample cannot decide; on magika, PP-OCR det and cls it
    picked better than top-1 agreement, total SQNR or cosine). The winner is kept exactly as
    scored, its ranges from the calibration samples only: PP-OCR cls's int8 accuracy moves by
    2-3 points with the exact sample set, so adding the held-out samples afterwards ships a
    model nobody measured (it did worse: 0.856 vs 0.863 mean top-1 agreement over 6
    calibration sets of 128 images). The pass log and stats (``chosen``, ``scores``,
    ``scored_on``) give every candidate's score; the QuantSpec annotations record the winner.
    With fewer than ``1/holdout`` samples nothing can be held out, and with ``holdout=0``
    nothing is: the candidates are then scored on (up to ``score_samples``) calibration samples
    themselves, and the log says so. ``candidates``, ``holdout``, ``score_samples``,
    ``validation`` and ``bias_correction`` matter only to ``auto``.

    ``clip_saturated`` (default on, every method) narrows each range to where the tensor's
    consumers still respond: a tensor read only by Relu, Clip, HardSigmoid, HardSwish or the
    Add→Clip→Mul of a decomposed hard-swish never needs values where they saturate (below −3
    for hard-swish), so the grid is spent where outputs change. It changes no output of the
    float model; on PP-OCR cls (18 hard-swish and 9 HardSigmoid inputs) it raised the mean
    top-1 agreement with float from 0.854 to 0.867 over 12 calibration sets of 128 images
    (400 evaluation images, int8 kernels). ``stats["narrowed"]`` counts the narrowed ranges.

    ``threads`` (default 1) is onnxruntime's intra-op thread count for these runs: they are
    many small runs with 100+ requested outputs, where its spinning thread pool burned about
    twice the CPU for no gain in wall time on PP-OCR and magika (None: onnxruntime's default).

    Errors (CalibrationError) for empty data, wrong input names/shapes/dtypes, and NaN/Inf in
    inputs or observed tensors. A tensor whose range is zero never gets a zero scale;
    ``on_constant=error`` makes it an error instead of a warning. Leaves the float model's
    per-channel input means of quantized convs in the pass context for ``bias-correction``.
    Needs: data. Not semantics-preserving.
    """

    needs_data = True
    # auto, as in presso.quantize: one default for both. With "insert-qdq,calibrate,fold-qdq" and 128
    # calibration samples, top-1 agreement with float under the int8 kernels went from minmax's 0.700 to
    # 0.793 on PP-OCR cls (400 images) and from 0.845 to 0.918 on magika (600 files).
    method: Method = "auto"
    percentile: float = 99.99
    candidates: list[str] | None = None
    holdout: float = 0.25
    score_samples: int = 64
    validation: Any = None
    bias_correction: bool = True
    threads: int | None = 1
    clip_saturated: bool = True
    samples: int | None = None
    batch: int | None = None
    on_constant: Literal["warn", "error"] = "warn"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if not 0 < self.percentile <= 100:
            raise PassError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.samples is not None and self.samples < 1:
            raise PassError(f"samples must be ≥ 1, got {self.samples}")
        if not 0 <= self.holdout <= 0.5:
            raise PassError(f"holdout must be in [0, 0.5], got {self.holdout}",
                            hint="the fraction of the calibration samples that auto scores its candidates on")
        if self.score_samples < 1:
            raise PassError(f"score_samples must be ≥ 1, got {self.score_samples}")
        candidates = self._candidates()
        auto = self.method == "auto"
        if model.nodes("QuantizeLinear") == [] and model.nodes("DequantizeLinear") == []:
            if any(True for _ in bodies(model.graph)):
                raise PassError("the model has no Q/DQ pairs to calibrate: its quantizable nodes sit inside "
                                "If/Loop/Scan bodies, which insert-qdq leaves float",
                                hint="Presso does not quantize inside control-flow bodies yet (calibration "
                                     "cannot observe values computed there); keep this model in float")
            raise PassError("the model has no Q/DQ pairs to calibrate", hint="run insert-qdq first")
        log: list[str] = []
        weights = _calibrate_constants(model)
        groups = _activation_groups(model)
        policies = _policies(model, groups, self.clip_saturated)
        stats: dict[str, Any] = {"method": self.method}
        chosen = (self.method, self.percentile)
        seen = 0
        floats = None
        if groups:
            methods = [m for m, _ in candidates] if auto else [self.method]
            statistics = _Statistics(model, groups, self.threads,
                                     histogram=any(m not in ("minmax", "mean-minmax") for m in methods),
                                     count_zeros="entropy" in methods)
            held = self._stream(model, ctx, statistics, auto)
            if auto:
                floats = {}
                chosen, scores, scored_on = _choose(model, groups, policies, candidates, statistics, held, ctx,
                                                    self.bias_correction, self.validation, self.score_samples,
                                                    self.batch, self.threads, floats)
                label = _label(*chosen)
                log.append(f"auto: {label} won with {_describe(scores[label])} on {scored_on}; "
                           + ", ".join(f"{k} {_describe(v)}" for k, v in scores.items() if k != label))
                stats.update(chosen=label, scored_on=scored_on, scores={
                    k: {"sqnr_db" if v[2] == "dB" else "equal_pct": round(v[0], 3),
                        **({"top1": v[1]} if v[1] is not None else {})} for k, v in scores.items()})
            seen = statistics.samples
            ctx.shared[FLOAT_MEANS_KEY] = (id(model), statistics.means())
        ranges = _ranges(model, groups, policies, *chosen)
        constant = _set_ranges(model, groups, ranges, _label(*chosen))
        widened = _fit_kernel_limits(model)
        if widened:
            log.append(f"{widened} scale(s) widened to the range onnxruntime's QLinearGlobalAveragePool accepts")
        if constant:
            message = (f"{len(constant)} observed tensor(s) held a single value on all {seen} samples "
                       f"(e.g. '{constant[0]}'); they got a unit range instead of a zero scale")
            if self.on_constant == "error":
                raise CalibrationError(message, where=f"tensor '{constant[0]}'",
                                       hint="give more varied data, or exclude the tensor (insert-qdq{exclude=...})")
            log.append(message)
        if floats is not None:  # auto made them int32 already: new scales, same graph
            biases = _requantize_biases(model, _bias_links(model, floats), log)
        else:
            biases = _quantize_biases(model, log)
        model.invalidate()
        stats.update({"samples": seen, "activation_groups": len(groups), "weights": weights, "biases": biases,
                      "constant_tensors": len(constant),
                      "narrowed": sum(1 for p in policies.values() if p["limits"] != (-np.inf, np.inf))})
        return PassResult(changed=True, log=log, stats=stats)

    def _candidates(self) -> list[tuple[str, float]]:
        """The (method, percentile) pairs that auto compares, validated."""
        texts = list(self.candidates) if self.candidates else list(DEFAULT_CANDIDATES)
        parsed: list[tuple[str, float]] = []
        for text in texts:
            name, _, value = str(text).strip().partition(":")
            if name not in RANGE_METHODS or (value and name != "percentile"):
                raise PassError(f"unknown calibration candidate '{text}'",
                                hint=f"use {', '.join(RANGE_METHODS)}, or percentile:P such as percentile:99.999")
            p = self.percentile
            if value:
                try:
                    p = float(value)
                except ValueError:
                    p = -1.0
                if not 0 < p <= 100:
                    raise PassError(f"the percentile of candidate '{text}' must be a number in (0, 100]")
            pair = (name, p if name == "percentile" else self.percentile)
            if pair not in parsed:
                parsed.append(pair)
        return parsed

    def _stream(self, model: Model, ctx: PassContext, statistics: _Statistics, auto: bool) -> _HeldOut:
        """The one pass over the data; for auto, every stride-th sample is held out instead."""
        source = DataSource.open(ctx.data, model)
        stride = round(1 / self.holdout) if auto and self.validation is None and self.holdout > 0 else 0
        held = _HeldOut(model, self.score_samples)
        whole_feeds = source.model_batch is not None and source.model_batch > 1  # a feed cannot be split
        bar = progress_bar(ctx.progress, sample_count(source, self.samples), "calibrate")
        read = 0
        try:
            for index, feed in enumerate(source.feeds(batch=self.batch or _default_batch(model), limit=self.samples)):
                check_finite(feed, where=f"calibration batch {index}")
                n = len(next(iter(feed.values())))
                calib, aside = _split(feed, n, read, index, stride, held.room, whole_feeds)
                if aside is not None:
                    held.add(aside)
                if calib is not None:
                    statistics.add(calib, where=f"calibration batch {index}")
                    if auto and self.validation is None and not held.feeds:
                        held.keep_fallback(calib)
                read += n
                if bar is not None:
                    bar.update(n)
        finally:
            if bar is not None:
                bar.close()
        if read == 0:
            raise CalibrationError("the calibration data holds no samples", hint="give at least one sample")
        return held  # the first sample (or feed) is never held out: the statistics are not empty


class _Statistics:
    """Observers of every calibrated tensor, fed by running the float model."""

    def __init__(self, model: Model, groups: dict, threads: int | None, *, histogram: bool, count_zeros: bool):
        float_model = model.copy()
        # Tensor objects survive strip_qdq; graph outputs may be renamed, so map names by object.
        tracked = {}
        for q in float_model.nodes("QuantizeLinear"):
            if not isinstance(q.inputs[0], gs.Constant):
                tracked.setdefault(q.inputs[0].name, q.inputs[0])
        strip_qdq(float_model)
        names = {old: t.name for old, t in tracked.items()}
        for group in groups.values():
            group["observer"] = RangeObserver(histogram=histogram, count_zeros=count_zeros)
        self.float_model = float_model
        self.threads = threads
        self.observers = {names[n]: g["observer"] for g in groups.values() for n in g["tensors"] if n in names}
        self.wanted = sorted(self.observers)
        self.outputs = float_model.output_names()
        # per-channel input means of Conv/Gemm layers, for bias-correction (float name → model name)
        self.mean_names = {names[n]: n for n in _layer_inputs(model) if n in names}
        self.samples = 0
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def add(self, feed: dict[str, np.ndarray], *, where: str, outputs: bool = False) -> list[np.ndarray] | None:
        """Observe one batch; with ``outputs``, also return the float model's outputs on it."""
        names = list(dict.fromkeys(self.wanted + (self.outputs if outputs else [])))
        values = evaluate(self.float_model, feed, outputs=names, threads=self.threads)
        n = len(next(iter(feed.values())))
        for name in self.wanted:
            value = np.asarray(values[name])
            lo, hi = self.observers[name].update(value, samples=n)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise CalibrationError(f"tensor '{name}' holds NaN/Inf on {where}", where=f"tensor '{name}'",
                                       hint="check the input data's range; the float model overflows on it")
            if name in self.mean_names:
                self._add_mean(self.mean_names[name], value)
        self.samples += n
        return [np.asarray(values[name]) for name in self.outputs] if outputs else None

    def reference(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = evaluate(self.float_model, feed, threads=self.threads)
        return [np.asarray(values[name]) for name in self.outputs]

    def _add_mean(self, name: str, value: np.ndarray) -> None:
        if value.ndim < 2 or value.dtype.kind != "f":
            return
        axes = tuple(i for i in range(value.ndim) if i != 1)  # N, C, spatial…: per channel
        total = value.sum(axis=axes, dtype=np.float64)
        if name in self._sums and self._sums[name].shape != total.shape:
            return
        self._sums[name] = self._sums.get(name, 0.0) + total
        self._counts[name] = self._counts.get(name, 0) + value.size // value.shape[1]

    def means(self) -> dict[str, np.ndarray]:
        return {name: total / self._counts[name] for name, total in self._sums.items()}


class _HeldOut:
    """Samples set aside for scoring (at most ``limit``), and a few calibration samples to score
    on instead when the data set is too small to set any aside."""

    def __init__(self, model: Model, limit: int):
        self.model = model
        self.limit = limit
        self.feeds: list[dict[str, np.ndarray]] = []
        self.count = 0
        self.fallback: list[dict[str, np.ndarray]] = []
        self._fallback_count = 0

    @property
    def room(self) -> int:
        return self.limit - self.count

    def add(self, feed: dict[str, np.ndarray]) -> None:
        self.feeds.append({k: np.array(v) for k, v in check_feeds(self.model, feed).items()})
        self.count += len(next(iter(feed.values())))
        self.fallback = []

    def keep_fallback(self, feed: dict[str, np.ndarray]) -> None:
        if self._fallback_count < self.limit:
            self.fallback.append({k: np.array(v) for k, v in check_feeds(self.model, feed).items()})
            self._fallback_count += len(next(iter(feed.values())))


def _split(feed, n, first, index, stride, room, whole_feeds):
    """(calibration part, held-out part) of one feed of ``n`` samples; either may be None.
    Held out: samples whose running index is ≡ −1 mod ``stride`` (whole feeds when the model's
    batch size is fixed above 1), while there is room."""
    if not stride or room <= 0:
        return feed, None
    if whole_feeds:
        return (None, feed) if index % stride == stride - 1 and n <= room else (feed, None)
    mask = (np.arange(first, first + n) % stride) == stride - 1
    picked = np.flatnonzero(mask)[:room]
    if picked.size == 0:
        return feed, None
    if picked.size == n:
        return None, feed
    mask[:] = False
    mask[picked] = True
    return {k: v[~mask] for k, v in feed.items()}, {k: v[mask] for k, v in feed.items()}


def _label(method: str, percentile: float) -> str:
    return f"percentile:{percentile:g}" if method == "percentile" else method


def _ranges(model: Model, groups: dict, policies: dict, method: str, percentile: float
            ) -> dict[str, tuple[float, float]]:
    """Each activation group's clipping range under ``method``, within its consumers' limits."""
    ranges = {}
    for key, group in groups.items():
        spec = _spec_for(model, group["tensors"], group["dtype"])
        policy = policies[key]
        use = "minmax" if policy["minmax"] else method
        lo, hi = group["observer"].compute_range(use, spec.dtype, spec.symmetric, percentile)
        ranges[key] = _within(lo, hi, *policy["limits"], spec.dtype)
    return ranges


def _within(lo: float, hi: float, low: float, high: float, dtype: str) -> tuple[float, float]:
    """[lo, hi] narrowed to [low, high], keeping one grid step beyond a bound that cuts, so that
    the bound itself stays on the grid (a saturated consumer then sees exactly its bound)."""
    new_lo, new_hi = max(lo, low), min(hi, high)
    if new_lo >= new_hi:  # every value lies where the consumers saturate: nothing to gain
        return lo, hi
    qmin, qmax = qrange(dtype)
    step = (new_hi - new_lo) / (qmax - qmin)
    if new_lo > lo:
        new_lo = max(lo, new_lo - step)
    if new_hi < hi:
        new_hi = min(hi, new_hi + step)
    return new_lo, new_hi


def _qparams_for(model: Model, group: dict, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    spec = _spec_for(model, group["tensors"], group["dtype"])
    return compute_qparams(lo, hi, spec.dtype, spec.symmetric, scale_dtype=group["scale"].values.dtype)


def _set_ranges(model: Model, groups: dict, ranges: dict, record: str) -> list[str]:
    """Write every group's scale and zero point; returns the tensors that held one value only."""
    constant = []
    for key, group in groups.items():
        if group["observer"].min == group["observer"].max:
            constant.append(group["tensors"][0])
        spec = _spec_for(model, group["tensors"], group["dtype"])
        scale, zero = _qparams_for(model, group, *ranges[key])
        set_constant(group["scale"], scale)
        set_constant(group["zero"], zero)
        for name in group["tensors"]:
            model.annotations.quant[name] = QuantSpec(spec.dtype, spec.symmetric, None, [float(scale)],
                                                      [int(zero)], record)
    return constant


def _layer_inputs(model: Model) -> set[str]:
    """Float tensors read through Q→DQ as the data input of a Conv/Gemm (bias-correction needs
    their per-channel means)."""
    names = set()
    for node in model.nodes("Conv", "Gemm"):
        dq = producer(node.inputs[0]) if node.inputs else None
        q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        if q is not None and q.op == "QuantizeLinear" and not isinstance(q.inputs[0], gs.Constant):
            names.add(q.inputs[0].name)
    return names


# ---- auto: score each candidate on held-out samples ---------------------------------------------
def _choose(model, groups, policies, candidates, statistics, held, ctx, bias_correction, validation, limit,
            batch, threads, floats):
    """Score every candidate; returns ((method, percentile), {label: score}, what was scored on).

    The candidates' ranges come from the calibration samples only; the held-out samples only
    supply the float model's reference outputs. Leaves ``model`` with int32 biases (float
    values in ``floats``) for the first candidate's scales.
    """
    from .bias_correction import apply_bias_correction

    candidate_ranges = {_label(*c): _ranges(model, groups, policies, *c) for c in candidates}
    if validation is not None:
        source = DataSource.open(validation, model)
        feeds = []
        for i, feed in enumerate(source.feeds(batch=batch or _default_batch(model), limit=limit)):
            check_finite(feed, where=f"validation batch {i}")
            feeds.append(check_feeds(model, feed))
        references = [statistics.reference(feed) for feed in feeds]
        scored_on = f"{sum(len(next(iter(f.values()))) for f in feeds)} validation sample(s)"
    elif held.feeds:
        feeds = held.feeds
        references = [statistics.reference(feed) for feed in feeds]
        scored_on = f"{held.count} held-out sample(s)"
    else:
        feeds = held.fallback
        references = [statistics.reference(feed) for feed in feeds]
        scored_on = (f"{sum(len(next(iter(f.values()))) for f in feeds)} calibration sample(s), "
                     "too few samples to hold any out")
    # The model gets its int32 biases now (the graph edits are slow on large graphs; the final
    # choice only rewrites values). One trial copy, built once; each candidate only rewrites its
    # scale, zero-point and int32-bias initializers in the serialized graph before onnxruntime
    # loads it.
    first = _label(*candidates[0])
    _set_ranges(model, groups, candidate_ranges[first], first)
    _quantize_biases(model, [], floats)
    trial = model.copy()
    trial_groups = _activation_groups(trial)
    for key, group in trial_groups.items():
        group["observer"] = groups[key]["observer"]
    if bias_correction:
        apply_bias_correction(trial, statistics.means())
    links = _bias_links(trial)
    proto, arrays = trial.to_proto_without_large_data()
    initializers = {t.name: t for t in proto.graph.initializer}

    def patch(name: str, values: np.ndarray) -> None:
        initializers[name].CopyFrom(numpy_helper.from_array(np.asarray(values), name))

    scores: dict[str, tuple[float, float | None, str]] = {}
    bar = _progress(ctx.progress, len(candidates), "calibrate: scoring", unit="candidate")
    try:
        for label, ranges in candidate_ranges.items():
            if bar is not None:
                bar.update(1)
            same = next((k for k in scores if candidate_ranges[k] == ranges), None)
            if same is not None:  # e.g. percentile:99.999 = minmax on small data: the same model
                scores[label] = scores[same]
                continue
            scales = {}
            for key, group in trial_groups.items():
                scale, zero = _qparams_for(trial, group, *ranges[key])
                patch(group["scale"].name, scale)
                patch(group["zero"].name, zero)
                scales[group["scale"].name] = scale
            for link in links:
                s_in = scales.get(link["s_in"].name, link["s_in"].values)
                scale, q = _bias_int32(link, s_in)
                patch(link["scale"].name, scale)
                patch(link["q"].name, q)
            try:
                session = create_session(proto, optimization="all", initializers=arrays, threads=threads)
                got = [[np.asarray(v) for v in session.run(None, feed)] for feed in feeds]
            except Exception:  # an int8 kernel refuses these scales (see _fit_kernel_limits): last place
                scores[label] = (-np.inf, None, "dB")
                continue
            scores[label] = _score(references, got, feeds)
    finally:
        if bar is not None:
            bar.close()
    best = max(scores, key=lambda k: scores[k][0])  # the first of equals: the candidates' order
    return next(c for c in candidates if _label(*c) == best), scores, scored_on


def _bias_links(model: Model, floats: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Every int32 bias (after _quantize_biases) with its float values (from ``floats`` when
    there, else dequantized) and the input scale constant that its scale derives from."""
    links = []
    for node in model.nodes("Conv", "ConvTranspose", "Gemm"):
        if len(node.inputs) < 3 or not node.inputs[2].name:
            continue
        dq_b, dq_x, dq_w = producer(node.inputs[2]), producer(node.inputs[0]), producer(node.inputs[1])
        if any(d is None or d.op != "DequantizeLinear" for d in (dq_b, dq_x, dq_w)):
            continue
        pb, px, pw = qparams(dq_b), qparams(dq_x), qparams(dq_w)
        if (pb is None or px is None or pw is None or pb.dtype != "int32"
                or not isinstance(dq_b.inputs[0], gs.Constant) or np.asarray(px.scale.values).size != 1):
            continue
        values = (floats or {}).get(dq_b.inputs[0].name)
        if values is None:
            values = dequantize(dq_b.inputs[0].values, pb.scale.values, pb.zero_point.values, pb.axis,
                                dtype=np.float64)
        links.append({"q": dq_b.inputs[0], "scale": pb.scale, "axis": pb.axis, "values": values,
                      "s_in": px.scale, "s_w": np.asarray(pw.scale.values, np.float64)})
    return links


def _requantize_biases(model: Model, links: list[dict], log: list[str]) -> int:
    """Requantize linked int32 biases for the current input scales (no graph edits)."""
    for link in links:
        scale, q = _bias_int32(link, link["s_in"].values)
        saturated = int(np.sum(np.abs(q.astype(np.int64)) >= 2**31 - 1))
        if saturated:
            log.append(f"bias '{link['q'].name}': {saturated} value(s) saturated int32")
        set_constant(link["scale"], scale)
        set_constant(link["q"], q)
        spec = model.annotations.quant.get(link["q"].name)
        if spec is not None:
            model.annotations.quant[link["q"].name] = QuantSpec(spec.dtype, spec.symmetric, spec.axis, _small(scale),
                                                                spec.zero_point, spec.method)
    return len(links)


def _bias_int32(link: dict, s_in) -> tuple[np.ndarray, np.ndarray]:
    """(scale, int32 values) of a linked bias for the input scale ``s_in``."""
    old = np.asarray(link["scale"].values)
    product = np.asarray(s_in, np.float64).reshape(()) * link["s_w"].ravel()
    # a per-tensor weight scale (one value) serves every channel of a per-channel bias
    scale = np.broadcast_to(product, old.shape).astype(old.dtype)
    q = quantize(link["values"].astype(old.dtype), scale, np.zeros(scale.shape, np.int32), "int32",
                 link["axis"] if scale.ndim else None)
    return scale, q


def _score(references: list[list[np.ndarray]], got: list[list[np.ndarray]], feeds: list[dict]
           ) -> tuple[float, float | None, str]:
    """(mean per-sample SQNR in dB over every float output, top-1 agreement over the outputs that
    look like class scores [N, C ≥ 2] or None when none does, unit). A model without float
    outputs (labels, indices) scores the percentage of its output elements equal to the float
    model's instead (unit "%")."""
    sqnrs: list[np.ndarray] = []
    equal: list[float] = []
    agree = total = 0
    for ref_outputs, outputs, feed in zip(references, got, feeds):
        n = len(next(iter(feed.values())))
        for ref, out in zip(ref_outputs, outputs):
            if ref.shape != out.shape:
                equal.append(0.0)
                continue
            if ref.dtype.kind != "f":
                equal.append(float(np.mean(ref == out)) if ref.size else 1.0)
                continue
            rows = n if ref.ndim and ref.shape[0] == n else 1
            r = ref.astype(np.float64).reshape(rows, -1)
            o = out.astype(np.float64).reshape(rows, -1)
            signal = np.sum(np.where(np.isfinite(r), r, 0.0) ** 2, axis=1)
            noise = np.sum(np.nan_to_num(r - o, nan=np.inf, posinf=np.inf, neginf=np.inf) ** 2, axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                db = 10 * np.log10(signal / noise)
            db = np.where(noise == 0, _SQNR_CAP_DB, db)
            sqnrs.append(np.clip(np.nan_to_num(db, nan=-_SQNR_CAP_DB), -_SQNR_CAP_DB, _SQNR_CAP_DB))
            if ref.ndim == 2 and ref.shape[1] >= 2:
                agree += int(np.sum(ref.argmax(axis=1) == out.argmax(axis=1)))
                total += ref.shape[0]
    top1 = agree / total if total else None
    if sqnrs:
        return float(np.mean(np.concatenate(sqnrs))), top1, "dB"
    return (100.0 * float(np.mean(equal)) if equal else 0.0), top1, "%"


def _describe(score: tuple[float, float | None, str]) -> str:
    value, top1, unit = score
    text = f"SQNR {value:.2f} dB" if unit == "dB" else f"{value:.1f}% equal outputs"
    return text + (f" (top-1 {top1:.3f})" if top1 is not None else "")


_MAX_REDUCTIONS = ("MaxPool", "GlobalMaxPool", "ReduceMax", "ArgMax", "TopK")
_UNLIMITED = (-np.inf, np.inf)


def _policies(model: Model, groups: dict, clip_saturated: bool) -> dict[str, dict]:
    """Per activation group: whether it must use min/max, and the interval its range may be
    narrowed to (see :func:`_consumer_limits`)."""
    extremal = _feeds_max_reduction(model)
    policies = {}
    for key, group in groups.items():
        # Clipping a tensor whose maximum is the signal (max pooling) destroys that signal.
        limits = [_consumer_limits(model, name) if clip_saturated else _UNLIMITED for name in group["tensors"]]
        policies[key] = {"minmax": any(t in extremal for t in group["tensors"]),
                         "limits": (min(lo for lo, _ in limits), max(hi for _, hi in limits))}
    return policies


def _consumer_limits(model: Model, name: str) -> tuple[float, float]:
    """The interval outside which no consumer of the quantized ``name`` changes its output.

    Beyond it the grid would spend levels on values that every consumer maps to the same
    result, so narrowing the range to it loses nothing and rounds the rest more finely. Known
    consumers (reading the tensor through its Q→DQ pair): Relu [0, ∞), Clip [min, max],
    HardSigmoid [−β/α, (1−β)/α], HardSwish [−3, ∞), and MobileNetV3's decomposed hard-swish
    ``x · Clip(x + c, 0, b) / b``: its Add [−c, b − c] and Mul [−c, ∞) (the gate is 0 below −c).
    Any other consumer, or a graph output, keeps the whole line. The tensor's interval is the
    hull of its consumers' intervals.
    """
    tensor = model.graph.tensors().get(name)
    if tensor is None:
        return _UNLIMITED
    readers = []
    for q in tensor.outputs:
        if q.op != "QuantizeLinear":
            continue  # a float reader does not see the quantized range
        for dq in q.outputs[0].outputs:
            if dq.op != "DequantizeLinear" or is_graph_output(model, dq.outputs[0]):
                return _UNLIMITED
            readers += [(node, dq.outputs[0]) for node in dq.outputs[0].outputs]
    if not readers:
        return _UNLIMITED
    low, high = np.inf, -np.inf
    for node, read in readers:
        lo, hi = _saturation_interval(node, read, name)
        low, high = min(low, lo), max(high, hi)
    return low, high


def _saturation_interval(node: gs.Node, read: gs.Tensor, source: str) -> tuple[float, float]:
    """Where ``node``'s output still depends on its input ``read`` (the DQ of ``source``)."""
    if node.inputs[0] is read and node.op == "Relu":
        return 0.0, np.inf
    if node.inputs[0] is read and node.op == "Clip":
        return _clip_bounds(node)
    if node.inputs[0] is read and node.op == "HardSigmoid":
        alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
        return (-beta / alpha, (1 - beta) / alpha) if alpha > 0 else _UNLIMITED
    if node.inputs[0] is read and node.op == "HardSwish":
        return -3.0, np.inf
    if node.op == "Add" and len(node.inputs) == 2:
        other = node.inputs[1] if node.inputs[0] is read else node.inputs[0]
        c = _scalar(other)
        clip = _only_reader(node.outputs[0], "Clip")
        if c is not None and clip is not None:
            lo, hi = _clip_bounds(clip)
            return lo - c, hi - c
    if node.op == "Mul" and len(node.inputs) == 2:
        other = node.inputs[1] if node.inputs[0] is read else node.inputs[0]
        gate = _gate_threshold(other, source)
        if gate is not None:
            return gate, np.inf
    return _UNLIMITED


def _clip_bounds(clip: gs.Node) -> tuple[float, float]:
    if len(clip.inputs) > 1:  # opset ≥ 11: bounds are inputs (absent: unbounded)
        lo = _scalar(clip.inputs[1]) if len(clip.inputs) > 1 and clip.inputs[1].name else -np.inf
        hi = _scalar(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2].name else np.inf
        return (-np.inf if lo is None else lo), (np.inf if hi is None else hi)
    return float(clip.attrs.get("min", -np.inf)), float(clip.attrs.get("max", np.inf))


def _scalar(tensor: gs.Tensor) -> float | None:
    """The value of a one-element constant, read through a DequantizeLinear if there is one."""
    if isinstance(tensor, gs.Constant):
        values = np.asarray(tensor.values)
    else:
        dq = producer(tensor)
        source = float_source(dq) if dq is not None and dq.op == "DequantizeLinear" else None
        if isinstance(source, gs.Constant):
            values = np.asarray(source.values)
        elif isinstance(source, np.ndarray):
            values = source
        else:
            return None
    return float(values.reshape(-1)[0]) if values.size == 1 else None


def _only_reader(tensor: gs.Tensor, op: str) -> gs.Node | None:
    """The single node of type ``op`` reading ``tensor``, directly or through one Q→DQ pair."""
    readers = list(tensor.outputs)
    if len(readers) == 1 and readers[0].op == "QuantizeLinear":
        dqs = list(readers[0].outputs[0].outputs)
        if len(dqs) == 1 and dqs[0].op == "DequantizeLinear":
            readers = list(dqs[0].outputs[0].outputs)
    return readers[0] if len(readers) == 1 and readers[0].op == op else None


def _float_of(tensor: gs.Tensor) -> str:
    """Name of the float tensor behind ``tensor`` (itself, or the input of its DQ(Q(·)))."""
    dq = producer(tensor)
    if dq is not None and dq.op == "DequantizeLinear":
        q = producer(dq.inputs[0])
        if q is not None and q.op == "QuantizeLinear":
            return q.inputs[0].name
    return tensor.name


def _gate_threshold(gate: gs.Tensor, source: str) -> float | None:
    """−c when ``gate`` = Clip(source + c, 0, b) (read through Q→DQ pairs): the gate, and so
    ``source · gate``, is 0 for every source value below −c."""
    clip = producer(gate)
    if clip is not None and clip.op == "DequantizeLinear":
        q = producer(clip.inputs[0])
        clip = producer(q.inputs[0]) if q is not None and q.op == "QuantizeLinear" else None
    if clip is None or clip.op != "Clip" or _clip_bounds(clip)[0] != 0.0:
        return None
    add = producer(clip.inputs[0])
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return None
    for x, other in (add.inputs, add.inputs[::-1]):
        c = _scalar(other)
        if c is not None and _float_of(x) == source:
            return -c
    return None


def _feeds_max_reduction(model: Model) -> set[str]:
    """Names of Q inputs whose values reach a max-type reduction (through their Q→DQ)."""
    names = set()
    for node in model.nodes(*_MAX_REDUCTIONS):
        x = node.inputs[0]
        dq = producer(x)
        q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        if q is not None and q.op == "QuantizeLinear":
            names.add(q.inputs[0].name)
        names.add(x.name)
    return names


def _progress(enabled: bool, total: int | None, desc: str, unit: str = "sample"):
    return progress_bar(enabled, total, desc, unit)


def _fit_kernel_limits(model: Model) -> int:
    """Widen scales that onnxruntime's int8 GlobalAveragePool kernel refuses to run with.

    Its QLinearGlobalAveragePool throws "parameter out of computation range" unless
    2⁻³² ≤ s_in / (s_out · H·W) < 256: a near-constant average (e.g. of x and −x), whose output
    scale sits at its floor, made a model that loads but cannot run. Only ever widens (coarser
    steps, never clipping). Returns how many scales changed.
    """
    from ...ir.analysis.shapes import infer_tensor_infos

    infos = None
    widened = 0
    for node in model.nodes("GlobalAveragePool"):
        dq = producer(node.inputs[0])
        qs = [c for c in node.outputs[0].outputs if c.op == "QuantizeLinear"]
        p_in = qparams(dq) if dq is not None and dq.op == "DequantizeLinear" else None
        if p_in is None or p_in.axis is not None or not qs:
            continue
        infos = infos if infos is not None else infer_tensor_infos(model)
        info = infos.get(node.inputs[0].name)
        spatial = list(info.shape[2:]) if info is not None and info.shape is not None else None
        if not spatial or not all(isinstance(d, int) and d > 0 for d in spatial):
            continue
        size = float(np.prod(spatial))
        for q in qs:
            p_out = qparams(q)
            if p_out is None or p_out.axis is not None:
                continue
            s_in = float(np.asarray(p_in.scale.values).reshape(-1)[0])
            s_out = float(np.asarray(p_out.scale.values).reshape(-1)[0])
            if s_in / (s_out * size) >= 255.0:  # the output scale is too fine for the input's
                target, value = p_out.scale, s_in / (size * 255.0)
            elif s_in / (s_out * size) < 2.0**-31:  # the input scale is too fine for the output's
                target, value = p_in.scale, s_out * size * 2.0**-31
            else:
                continue
            dtype = np.asarray(target.values).dtype
            set_constant(target, np.full(np.shape(target.values), value * (1 + 1e-6), dtype=dtype))
            widened += 1
    return widened


def _default_batch(model: Model) -> int:
    """The model's static batch, else 16 (the batch axis is dynamic: any size runs)."""
    return feed_batch(model, 16)


def _spec_for(model: Model, tensors: list[str], dtype: str) -> QuantSpec:
    for name in tensors:
        spec = model.annotations.quant.get(name)
        if spec is not None and spec.dtype == dtype:
            return spec
    return QuantSpec(dtype, False, None)


def _activation_groups(model: Model) -> dict[str, dict]:
    """Q nodes on non-constant tensors, grouped by the scale constant they share."""
    groups: dict[str, dict] = {}
    for q in model.nodes("QuantizeLinear"):
        params = qparams(q)
        if params is None or isinstance(q.inputs[0], gs.Constant):
            continue
        if params.scale.values.size != 1:
            raise PassError("per-channel activation quantization cannot be calibrated", where=f"node '{q.name}'",
                            hint="use per-tensor activations")
        group = groups.setdefault(params.scale.name, {"scale": params.scale, "zero": params.zero_point,
                                                      "dtype": params.dtype, "tensors": []})
        if q.inputs[0].name not in group["tensors"]:
            group["tensors"].append(q.inputs[0].name)
    return groups


def _calibrate_constants(model: Model) -> int:
    """Weights and constant operands: scales from their own values (per channel if axis)."""
    done = 0
    for q, params in constant_quantizers(model):
        x = q.inputs[0]
        spec = model.annotations.quant.get(x.name)
        symmetric = spec.symmetric if spec is not None else bool(not np.any(params.zero_point.values))
        narrow = spec.reduce_range if spec is not None else False
        values = np.asarray(x.values)
        lo, hi = channel_range(values, params.axis)
        scale, zero = compute_qparams(lo, hi, params.dtype, symmetric, scale_dtype=params.scale.values.dtype,
                                      reduce_range=narrow)
        set_constant(params.scale, scale.reshape(np.shape(params.scale.values)))
        set_constant(params.zero_point, zero.reshape(np.shape(params.zero_point.values)))
        model.annotations.quant[x.name] = QuantSpec(params.dtype, symmetric, params.axis, _small(scale),
                                                    _small(zero), "minmax", narrow)
        done += 1
    return done


def _dq_scale(tensor: gs.Tensor) -> np.ndarray | None:
    dq = producer(tensor)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    params = qparams(dq)
    return None if params is None else np.asarray(params.scale.values)


def _quantize_biases(model: Model, log: list[str], floats: dict[str, np.ndarray] | None = None) -> int:
    """Store marked Conv/ConvTranspose/Gemm biases as int32 with scale = s_input × s_weight.
    ``floats`` receives each int32 constant's float values (to requantize them exactly)."""
    with batch_names(model):  # one walk of the graph for all the new names, not one per name
        done = _quantize_biases_in(model, log, floats)
    model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return done


def _quantize_biases_in(model: Model, log: list[str], floats: dict[str, np.ndarray] | None) -> int:
    done = 0
    for node in model.nodes("Conv", "ConvTranspose", "Gemm"):
        if len(node.inputs) < 3 or not node.inputs[2].name:
            continue
        bias = node.inputs[2]
        dq = producer(bias)
        if isinstance(bias, gs.Constant):
            key, values = bias.name, np.asarray(bias.values)
        elif dq is not None and dq.op == "DequantizeLinear" and isinstance(dq.inputs[0], gs.Constant) and qparams(dq):
            params = qparams(dq)  # already int32 (re-calibration): recover the float bias
            key = dq.inputs[0].name
            values = dequantize(dq.inputs[0].values, params.scale.values, params.zero_point.values, params.axis)
        else:
            continue
        spec = model.annotations.quant.get(key)
        if spec is None or spec.dtype != "int32":
            continue
        s_in, s_w = _dq_scale(node.inputs[0]), _dq_scale(node.inputs[1])
        if s_in is None or s_w is None:
            continue
        scale = (s_in.astype(np.float64).reshape(()) * s_w.astype(np.float64).ravel()).astype(values.dtype)
        if scale.size == 1:
            scale = scale.reshape(())
        elif scale.size != values.size:
            continue
        q = quantize(values, scale, np.zeros(scale.shape, np.int32), "int32", 0 if scale.ndim else None)
        saturated = int(np.sum(np.abs(q.astype(np.int64)) >= 2**31 - 1))
        if saturated:
            log.append(f"bias '{key}' of '{node.name}': {saturated} value(s) saturated int32")
        name = f"{node.name}_bias_int32"
        q_const = add_initializer(model, name, q)
        s_const = add_initializer(model, f"{name}_scale", scale)
        z_const = add_initializer(model, f"{name}_zero_point", np.zeros(scale.shape, np.int32))
        new_dq = add_node(model, "DequantizeLinear", [q_const, s_const, z_const], name=f"{name}_dq",
                          attrs=qdq_attrs(0 if scale.ndim else None))
        node.inputs[2] = new_dq.outputs[0]
        if floats is not None:
            floats[q_const.name] = np.asarray(values, np.float64)
        model.annotations.quant.pop(key, None)
        model.annotations.quant[q_const.name] = QuantSpec("int32", True, 0 if scale.ndim else None,
                                                          _small(scale), _small(np.zeros(scale.shape, np.int64)), "input×weight")
        done += 1
    return done
