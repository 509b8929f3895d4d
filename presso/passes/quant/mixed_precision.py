"""`mixed-precision`: keep the fewest layers in higher precision that hold a task-metric drop,
and (``latency=measure``) keep int8 only where its kernel is faster than float.

Runs on a calibrated Q/DQ model, after ``calibrate``/``bias-correction`` and before
``fold-qdq``. Not semantics-preserving by itself: it brings the quantized model back toward
the float one.
"""

from __future__ import annotations

from typing import Any, Literal

from ...ir import Model
from ...ir.errors import PassError
from ..base import Pass, PassContext, PassResult
from ..progress import progress_bar
from ..registry import register_pass
from . import layer_precision as lp
from .metrics import get_metric, model_outputs
from .sensitivity import measure

PLAN_KEY = "mixed_precision.plan"  # ctx.shared: {layer: (level, reason)} for reports
_LATENCY_MARGIN = 1.05  # a form must be ≥ 5% faster to count as faster (timing noise)


@register_pass("mixed-precision")
class MixedPrecision(Pass):
    """Choose each quantized layer's precision: ``int8``, ``a16w8`` (int8 weights, float
    activations: what 16-bit activations are on onnxruntime's CPU kernels) or ``float``.

    Accuracy (``max_drop``, default 0.01; ``none`` to skip): the int8 model's ``metric``
    (``top1``, ``iou``, ``cosine``, ``nn``, ``mse``, ``sqnr`` or, from Python, a callable; see
    ``quant.metrics``) against the float model is measured on ``validation`` data (default: the
    pass's data; pass held-out data to verify on samples calibration did not see, at most
    ``validation_samples``). When the drop exceeds ``max_drop``, every layer's sensitivity —
    the metric drop and output SQNR with only that layer quantized, on ``samples`` samples of
    the data — ranks the layers, and the shortest most-sensitive-first prefix that brings the
    drop within ``max_drop`` goes to the first of ``levels`` (default ``a16w8`` then ``float``)
    that can; the prefix length is found by doubling then bisection, each step verified on the
    validation data. If even every layer at the last level cannot, the pass says so and keeps
    the best found.

    Latency (``latency=measure``, decided first, so that the accuracy steps build on it):
    every layer is timed alone in each form (one-node models on onnxruntime, ``threads``
    threads, real input values; ``quant.layer_latency``) and a layer whose int8 kernel is not
    at least 5% faster than float goes to ``a16w8`` (int8 weights, smaller) when that is not
    slower than float, else ``float``. Since a whole model also pays a quantize/dequantize
    wherever int8 and float layers meet, whole-model times (folded as deployed) then decide per
    kind of layer (op; depthwise convs apart) whether that choice stands, and if no mix is
    faster than the float model every layer is float. The accuracy steps then promote only
    layers still int8; a promoted ``a16w8`` layer slower than float becomes ``float``, and if
    the final mix is slower than the float model, every layer is float: never slower than
    float, as small as that allows.

    The log lists every layer's final precision and why; ``ctx.shared["mixed_precision.plan"]``
    holds the same as {layer: (precision, reason)}. The float weights of ``float`` layers come
    from the pipeline's input model (before bias-correction moved their biases). Needs: data.
    Not semantics-preserving.
    """

    needs_data = True
    max_drop: float | None = 0.01
    metric: Any = "top1"
    levels: list[str] = ["a16w8", "float"]
    latency: Literal["none", "measure"] = "none"
    samples: int | None = 32
    validation: Any = None
    validation_samples: int | None = 256
    threads: int = 1

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        metric = get_metric(self.metric)
        for level in self.levels:
            if level not in lp.LEVELS or level == "int8":
                raise PassError(f"unknown higher precision '{level}'", hint="levels are a16w8 and float")
        if self.max_drop is not None and self.max_drop < 0:
            raise PassError(f"max_drop must be ≥ 0, got {self.max_drop}")
        if not model.nodes("QuantizeLinear", "DequantizeLinear"):
            raise PassError("the model has no Q/DQ pairs", hint="run insert-qdq and calibrate first, e.g. "
                            "insert-qdq,calibrate,mixed-precision{max_drop=0.01},fold-qdq")
        names = lp.layer_names(model)
        reference = lp.float_reference(ctx.reference, ctx) if ctx.reference is not None else None
        if reference is None:
            from .qdq import strip_qdq

            reference = model.copy()
            strip_qdq(reference)
        validation = self.validation if self.validation is not None else ctx.data
        ref_out = model_outputs(reference, validation, samples=self.validation_samples, threads=self.threads)
        ref_score = metric.reference_score(ref_out)

        def drop_of(plan: dict[str, str]) -> float:
            candidate = model.copy()
            lp.apply_precision(candidate, plan, reference)
            return metric.drop(ref_score, metric(ref_out, model_outputs(candidate, validation,
                                                                         samples=self.validation_samples,
                                                                         threads=self.threads)))

        plan = {name: ("int8", "") for name in names}
        log: list[str] = []
        stats: dict[str, Any] = {"metric": metric.name, "layers": len(names)}
        timing = None
        if self.latency == "measure":
            # Latency first: a layer whose int8 form is slower leaves int8 whatever the accuracy,
            # and every accuracy step below is measured on top of that.
            timing = self._by_latency(model, reference, ctx, plan, log)

        def levels_of(candidate: dict) -> dict[str, str]:
            return {name: level for name, (level, _) in candidate.items() if level != "int8"}

        int8_drop = drop_of({})
        log.append(f"int8 everywhere: {metric.name} drop {int8_drop:.4f} on {len(ref_out)} validation samples")
        start_drop = drop_of(levels_of(plan)) if levels_of(plan) else int8_drop
        if timing is not None:
            log.append(f"after latency choices: {metric.name} drop {start_drop:.4f}")
        stats["int8_drop"] = int8_drop
        final_drop = start_drop
        evaluations = 2 if levels_of(plan) else 1
        if self.max_drop is not None and start_drop > self.max_drop:
            report = measure(model, reference, ctx.data, metric, samples=self.samples, only_float=False,
                             progress=ctx.progress)
            ranked = [row.name for row in report.ranked() if plan[row.name][0] == "int8"]
            why = {row.name: f"sensitivity rank {i + 1} (alone: drop {row.only_quantized_drop:.4f}, "
                   f"SQNR {row.only_quantized_sqnr:.1f} dB)" for i, row in enumerate(report.ranked())}
            base = levels_of(plan)
            best = (start_drop, 0, None)
            for level in self.levels:
                count, drop, tried = _shortest_prefix(ranked, level, lambda extra: drop_of({**base, **extra}),
                                                      self.max_drop)
                evaluations += tried
                if drop < best[0] or count is not None:
                    best = (drop, count if count is not None else len(ranked), level)
                if count is not None:
                    break
            final_drop, count, level = best
            if level is None or final_drop > self.max_drop:
                log.append(f"no plan reaches {metric.name} drop ≤ {self.max_drop} (best {final_drop:.4f}); "
                           "keeping the best found")
            for name in ranked[:count]:
                plan[name] = (level, f"{metric.name} drop over {self.max_drop}: {why[name]}")
            stats["sensitivity_runs"] = len(report.layers)
            if timing is not None and count:
                final_drop = self._settle_latency(model, reference, plan, timing, log, drop_of, final_drop)
                evaluations += 1
        levels = levels_of(plan)
        if levels:
            lp.apply_precision(model, levels, reference)
        for name, (level, reason) in plan.items():
            log.append(f"{name}: {level}" + (f" ({reason})" if reason else " (within the drop as int8)"))
        ctx.shared[PLAN_KEY] = dict(plan)
        counts = {level: sum(1 for lvl, _ in plan.values() if lvl == level) for level in lp.LEVELS}
        stats.update({"final_drop": final_drop, "evaluations": evaluations, **counts})
        log.insert(1, f"final: {metric.name} drop {final_drop:.4f}; " +
                   ", ".join(f"{n} {level}" for level, n in counts.items()))
        return PassResult(changed=bool(levels), stats=stats, log=log)

    def _settle_latency(self, model: Model, reference: Model, plan: dict, timing: dict, log: list, drop_of,
                        drop: float) -> float:
        """After the accuracy steps: an ``a16w8`` layer slower than float becomes float, and a
        whole model slower than float becomes float everywhere (never slower than float)."""
        times, timer, float_ms = timing["layers"], timing["timer"], timing["float_ms"]
        changed = False
        for name, (level, reason) in list(plan.items()):
            t = times.get(name, {})
            if level == "a16w8" and t.get("a16w8") is not None and t.get("float") is not None \
                    and t["a16w8"] > t["float"] * _LATENCY_MARGIN:
                plan[name] = ("float", f"{reason}; a16w8 slower than float: {_timing(t)}")
                changed = True
        edited = model.copy()
        lp.apply_precision(edited, {n: lvl for n, (lvl, _) in plan.items() if lvl != "int8"}, reference)
        final_ms = timer.ms(edited)
        log.append(f"latency with the accuracy choices: {final_ms:.3f} ms (float {float_ms:.3f} ms)")
        if final_ms > float_ms:
            for name in plan:
                plan[name] = ("float", f"the mix that holds the drop is slower than float ({final_ms:.3f} vs "
                                       f"{float_ms:.3f} ms)")
            return 0.0
        return drop_of({n: lvl for n, (lvl, _) in plan.items() if lvl != "int8"}) if changed else drop

    def _by_latency(self, model: Model, reference: Model, ctx: PassContext, plan: dict, log: list) -> dict:
        from ...ir import DataSource
        from .layer_latency import WholeModelTimer, measure_layers

        feed = next(iter(DataSource.open(ctx.data, model).feeds(limit=1)))
        bar = progress_bar(ctx.progress, len(plan), "layer latency", unit="layer")
        try:
            times = measure_layers(model, reference, list(plan), feed, threads=self.threads, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        by_name = {node.name: node for node in lp.layers(model)}
        accuracy_plan = dict(plan)
        faster: dict[str, tuple[str, str]] = {}  # per layer: the form its own timings prefer
        timing_of: dict[str, str] = {}
        for name, (level, reason) in plan.items():
            t = times.get(name, {})
            t_int8, t_w8, t_float = t.get("int8"), t.get("a16w8"), t.get("float")
            timing = timing_of[name] = f"int8 {_us(t_int8)}, a16w8 {_us(t_w8)}, float {_us(t_float)} µs"
            if t_float is None:
                faster[name] = (level, reason or "kept: its float form could not be timed alone")
            elif level == "int8" and (t_int8 is None or t_int8 * _LATENCY_MARGIN > t_float):
                higher = "a16w8" if t_w8 is not None and t_w8 <= t_float * _LATENCY_MARGIN else "float"
                faster[name] = (higher, f"int8 kernel not faster: {timing}")
            elif level == "a16w8" and t_w8 is not None and t_w8 > t_float * _LATENCY_MARGIN:
                faster[name] = ("float", f"{reason}; a16w8 slower than float: {timing}")
            elif level == "int8":
                faster[name] = ("int8", f"int8 kernel faster: {timing}")
            else:
                faster[name] = (level, f"{reason}; {timing}")

        timer = WholeModelTimer(reference, feed, threads=self.threads)

        def latency(candidate: dict) -> float:
            edited = model.copy()
            lp.apply_precision(edited, {n: lvl for n, (lvl, _) in candidate.items() if lvl != "int8"}, reference)
            return timer.ms(edited)

        # Layers are timed alone; a whole model also pays a quantize/dequantize wherever int8 and
        # float layers meet, so whole-model times decide, per kind of layer, from the per-layer choice.
        float_ms = timer.baseline_ms
        best, best_ms = faster, latency(faster)
        tried = [("per-layer timings", best_ms)]
        accuracy_ms = latency(accuracy_plan)
        tried.append(("accuracy plan alone", accuracy_ms))
        if accuracy_ms < best_ms:
            best = {n: (lvl, reason or f"int8, faster as a whole model: {timing_of[n]}")
                    for n, (lvl, reason) in accuracy_plan.items()}
            best_ms = accuracy_ms
        kinds: dict[str, list[str]] = {}
        for name, (level, _) in accuracy_plan.items():
            if level == "int8" and name in by_name:
                kinds.setdefault(_kind(by_name[name]), []).append(name)
        for kind, names in sorted(kinds.items()):
            trial = dict(best)
            to_int8 = sum(1 for n in names if best[n][0] != "int8") * 2 >= len(names)
            for n in names:
                if to_int8:
                    trial[n] = ("int8", f"{kind} layers int8, faster as a whole model: {timing_of[n]}")
                else:
                    higher = faster[n][0] if faster[n][0] != "int8" else "float"
                    trial[n] = (higher, f"{kind} layers {higher}, faster as a whole model: {timing_of[n]}")
            trial_ms = latency(trial)
            tried.append((f"{kind} → {'int8' if to_int8 else 'higher'}", trial_ms))
            if trial_ms < best_ms * 0.97:
                best, best_ms = trial, trial_ms
        if best_ms > float_ms:
            best = {n: ("float", f"no mix with int8 was faster than float ({best_ms:.3f} vs {float_ms:.3f} ms)")
                    for n in plan}
        plan.update(best)
        log.append(f"latency: float {float_ms:.3f} ms; " + "; ".join(f"{k} {v:.3f} ms" for k, v in tried))
        return {"layers": times, "timer": timer, "float_ms": float_ms}


def _kind(node) -> str:
    """A layer's kind for whole-model latency choices: its op, depthwise convs apart."""
    if node.op == "Conv" and int(node.attrs.get("group", 1)) > 1:
        return "Conv(depthwise)"
    return node.op


def _timing(t: dict) -> str:
    return f"int8 {_us(t.get('int8'))}, a16w8 {_us(t.get('a16w8'))}, float {_us(t.get('float'))} µs"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _shortest_prefix(ranked: list[str], level: str, drop_of, max_drop: float) -> tuple[int | None, float, int]:
    """(shortest prefix length within ``max_drop`` or None, its drop (or the full prefix's), runs)."""
    tried = 0
    known: dict[int, float] = {}

    def at(count: int) -> float:
        nonlocal tried
        if count not in known:
            known[count] = drop_of({name: level for name in ranked[:count]})
            tried += 1
        return known[count]

    low, high = 0, None  # low: known to fail; high: known to pass
    count = 1
    while count < len(ranked):
        if at(count) <= max_drop:
            high = count
            break
        low = count
        count *= 2
    if high is None:
        if at(len(ranked)) > max_drop:
            return None, known[len(ranked)], tried
        high = len(ranked)
    while high - low > 1:
        middle = (low + high) // 2
        if at(middle) <= max_drop:
            high = middle
        else:
            low = middle
    return high, known[high], tried
