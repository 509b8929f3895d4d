"""`mixed-precision` (presso.quantize(max_drop=..., metric=..., latency=...)) on magika with real
files: the verified drop holds on held-out data, the plan is reported per layer, the options
parse from pipeline text."""

import re

import numpy as np
import pytest

import presso
from presso.passes.pipeline import parse_pass
from presso.passes.quant.metrics import get_metric, model_outputs
from presso.passes.quant.mixed_precision import PLAN_KEY, MixedPrecision
from presso.tools import zoo


@pytest.fixture(scope="module")
def magika():
    features, _ = zoo.magika_dataset(64)
    model = presso.load(zoo.magika_model())
    calibration = [{"bytes": features[i:i + 1]} for i in range(32)]
    validation = [{"bytes": features[i:i + 1]} for i in range(32, 64)]
    return model, calibration, validation


def _drop(metric, model, quantized, data):
    metric = get_metric(metric)
    reference = model_outputs(model, data)
    return metric.drop(metric.reference_score(reference), metric(reference, model_outputs(quantized, data)))


def test_drop_is_held_with_the_fewest_layers_promoted(magika):
    model, calibration, validation = magika
    plain = presso.quantize(model, calibration, method="minmax", progress=False)
    int8_drop = _drop("cosine", model, plain, validation)
    assert int8_drop > 0
    max_drop = int8_drop / 4
    quantized, report = presso.quantize(model, calibration, method="minmax", max_drop=max_drop, metric="cosine",
                                        validation=validation, report=True, progress=False)
    record = next(r for r in report.records if r.name == "mixed-precision")
    stats = record.result.stats
    assert stats["int8_drop"] == pytest.approx(int8_drop, rel=1e-3)
    assert stats["final_drop"] <= max_drop
    assert _drop("cosine", model, quantized, validation) <= max_drop * 1.01  # the folded artifact, measured anew
    promoted = stats["a16w8"] + stats["float"]
    assert 0 < promoted < stats["layers"] and stats["int8"] == stats["layers"] - promoted
    layer_lines = [line for line in record.result.log if re.match(r"^\S+: (int8|a16w8|float) \(", line)]
    assert len(layer_lines) == stats["layers"]  # every layer's final precision, with its reason


def test_a_loose_drop_changes_nothing(magika):
    model, calibration, validation = magika
    _, report = presso.quantize(model, calibration, method="minmax", max_drop=1.0, metric="mse",
                                validation=validation, report=True, progress=False)
    stats = next(r for r in report.records if r.name == "mixed-precision").result.stats
    assert stats["int8"] == stats["layers"] and stats["float"] == stats["a16w8"] == 0
    assert not next(r for r in report.records if r.name == "mixed-precision").result.changed


def test_latency_measure_gives_every_layer_a_measured_reason(magika):
    model, calibration, validation = magika
    ctx = presso.PassContext(progress=False)
    quantized = model.copy()
    manager = presso.PassManager.parse("insert-qdq,calibrate{method=minmax},"
                                       "mixed-precision{max_drop=none,latency=measure},fold-qdq")
    manager.run(quantized, data=calibration, ctx=ctx)
    plan = ctx.shared[PLAN_KEY]
    assert plan and all(level in ("int8", "a16w8", "float") for level, _ in plan.values())
    timed = [(level, reason) for level, reason in plan.values() if "µs" in reason]
    assert all(reason for _, reason in plan.values())
    assert timed or all("faster than float" in reason for _, reason in plan.values())
    for level, reason in timed:  # the choice follows the timings it reports
        times = dict(part.split()[:2] for part in reason.split(": ", 1)[1].removesuffix(" µs").split(", "))
        if "as a whole model" in reason or "faster than float" in reason:
            continue  # decided by whole-model times, which the log lists
        if level == "int8":
            assert float(times["int8"]) * 1.05 <= float(times["float"])
        else:
            assert times["int8"] == "-" or float(times["int8"]) * 1.05 > float(times["float"])
    outputs = model_outputs(quantized, validation)
    assert np.all(np.isfinite(outputs[0][model.output_names()[0]]))


def test_pipeline_options_and_errors(magika):
    model, calibration, _ = magika
    parsed = parse_pass("mixed-precision{max_drop=0.02,metric=iou,latency=measure,levels=[float]}")
    assert isinstance(parsed, MixedPrecision)
    assert (parsed.max_drop, parsed.metric, parsed.latency, parsed.levels) == (0.02, "iou", "measure", ["float"])
    with pytest.raises(presso.PipelineError, match="latency"):
        parse_pass("mixed-precision{latency=fast}")
    with pytest.raises(presso.PassError, match="no Q/DQ pairs"):
        presso.PassManager.parse("mixed-precision").run(model.copy(), data=calibration)
    with pytest.raises(presso.PassError, match="unknown higher precision 'int4'"):
        presso.PassManager.parse("insert-qdq,calibrate{method=minmax},mixed-precision{levels=[int4]}").run(
            model.copy(), data=calibration)


@pytest.mark.parametrize("needed", [0, 1, 5, 17, 40])
def test_shortest_prefix_finds_the_fewest_layers_in_few_runs(needed):
    from presso.passes.quant.mixed_precision import _shortest_prefix

    ranked = [f"layer{i}" for i in range(40)]
    calls = []

    def drop_of(plan):
        calls.append(len(plan))
        return 0.0 if len(plan) >= needed else 0.1 * (needed - len(plan))

    count, drop, tried = _shortest_prefix(ranked, "float", drop_of, 0.01)
    if needed == 0:
        # the caller measured the empty plan already; the search starts at one layer
        assert count == 1 and drop == 0.0
    else:
        assert count == needed and drop == 0.0
    assert tried == len(calls) == len(set(calls)) <= 2 * 6 + 1  # doubling then bisection, no repeats


def test_shortest_prefix_says_when_no_prefix_is_enough():
    from presso.passes.quant.mixed_precision import _shortest_prefix

    count, drop, _ = _shortest_prefix(["a", "b", "c"], "a16w8", lambda plan: 0.5 - 0.1 * len(plan), 0.01)
    assert count is None and drop == pytest.approx(0.2)
