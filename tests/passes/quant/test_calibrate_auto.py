"""`calibrate{method=auto}`: the candidate that really agrees best with the float model wins.

A tiny MLP whose input holds rare huge outliers (one feature of a few samples at 80, the rest
N(0, 1)): min/max ranges spend the 8-bit grid on the outliers, so every ordinary sample is
rounded coarsely; clipping them (percentile 99.9) is the better choice. "Really" is measured
independently: each candidate calibrated on its own, run by onnxruntime with its int8 fusions,
scored on fresh samples from the same distribution.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

import presso
from presso.ir import evaluate, load
from presso.ir.errors import CalibrationError, PassError
from presso.passes import PassManager
from presso.passes.quant.bias_correction import BiasCorrection
from presso.passes.quant.calibrate import DEFAULT_CANDIDATES, FLOAT_MEANS_KEY, Calibrate, _score
from presso.passes.quant.insert_qdq import InsertQDQ
from presso.passes.quant.observers import RangeObserver, _histogram


def _mlp():
    """x[N, 64] → Gemm(64→32) → Relu → Gemm(32→10) → class scores y[N, 10]."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 32)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((32, 10)) * 0.3).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, v.shape, v.ravel())
             for n, v in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return load(proto)


def _samples(n, seed, outliers):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    for i in outliers:
        x[i, rng.integers(64)] = 80.0
    return x


CALIB = _samples(128, 1, [0, 40, 81])  # none of them at a held-out position (every 4th from index 3)


def _calibrated(method, **options):
    model = _mlp()
    report = PassManager([InsertQDQ(), Calibrate(method=method, **options)]).run(model, data={"x": CALIB},
                                                                                 progress=False)
    return model, report.records[1].result


def _true_scores(candidates):
    """Each candidate on its own, scored on 512 fresh samples (outliers at the same rate)."""
    test = _samples(512, 2, list(range(0, 512, 100)))
    reference = evaluate(_mlp(), {"x": test})["y"]
    scores = {}
    for text in candidates:
        name, _, p = text.partition(":")
        model, _ = _calibrated(name, percentile=float(p or 99.99))
        got = evaluate(model, {"x": test}, optimization="all")["y"]
        scores[text] = _score([[reference]], [[got]], [{"x": test}])[0]
    return scores


@pytest.fixture(scope="module")
def truth():
    return _true_scores(DEFAULT_CANDIDATES)


def _scales(model):
    """Activation scales by tensor name."""
    return {q.inputs[0].name: float(np.asarray(q.inputs[1].values).item()) for q in model.nodes("QuantizeLinear")
            if not isinstance(q.inputs[0], gs.Constant)}


def test_auto_picks_what_really_agrees_best_and_reports_it(truth):
    best = max(truth, key=truth.get)
    # the case is meaningful: min/max (which the outliers ruin) is far behind the best
    assert truth["minmax"] < truth[best] - 4, truth
    model, result = _calibrated("auto")
    chosen = result.stats["chosen"]
    assert chosen != "minmax" and truth[chosen] > truth[best] - 1.5, (chosen, truth)
    assert set(result.stats["scores"]) == set(DEFAULT_CANDIDATES)
    assert result.stats["scored_on"] == "32 held-out sample(s)" and result.stats["samples"] == 96
    assert result.log[0].startswith(f"auto: {chosen} won with SQNR")
    assert {spec.method for spec in model.annotations.quant.values() if spec.dtype == "uint8"} == {chosen}
    # with the candidates that truth separates clearly, the better one always wins
    _, result = _calibrated("auto", candidates=["minmax", "percentile:99.9"])
    assert result.stats["chosen"] == "percentile:99.9"


def test_auto_with_validation_data_picks_the_true_best_and_keeps_all_samples(truth):
    validation = _samples(256, 3, [10, 150])
    model, result = _calibrated("auto", validation={"x": validation}, score_samples=256)
    assert result.stats["chosen"] == max(truth, key=truth.get)
    assert result.stats["scored_on"] == "256 validation sample(s)"
    # nothing held out: the ranges are exactly the chosen method's on all calibration samples
    name, _, p = result.stats["chosen"].partition(":")
    fixed, _ = _calibrated(name, percentile=float(p or 99.99))
    assert _scales(model) == _scales(fixed)


def test_the_winner_is_kept_exactly_as_scored():
    model, result = _calibrated("auto", candidates=["minmax"])
    assert result.stats["samples"] == 96  # the 32 held-out samples only score
    calibration = CALIB[np.arange(128) % 4 != 3]
    fixed = _mlp()
    PassManager([InsertQDQ(), Calibrate(method="minmax")]).run(fixed, data={"x": calibration}, progress=False)
    assert _scales(model) == _scales(fixed)


def test_auto_on_too_few_samples_scores_on_the_calibration_samples():
    model = _mlp()
    result = PassManager([InsertQDQ(), Calibrate(method="auto")]).run(
        model, data={"x": CALIB[:2]}, progress=False).records[1].result
    assert "too few samples to hold any out" in result.stats["scored_on"]
    assert result.stats["chosen"] in DEFAULT_CANDIDATES


def test_static_batch_models_hold_out_whole_feeds():
    model = _mlp()
    model.graph.inputs[0].shape = [4, 64]
    model.graph.outputs[0].shape = [4, 10]
    result = PassManager([InsertQDQ(), Calibrate(method="auto", batch=4)]).run(
        model, data={"x": CALIB[:64]}, progress=False).records[1].result
    assert result.stats["scored_on"] == "16 held-out sample(s)" and result.stats["samples"] == 48  # feeds 3, 7, 11, 15


@pytest.mark.parametrize("options,message", [
    ({"candidates": ["minmax", "kl"]}, "unknown calibration candidate 'kl'"),
    ({"candidates": ["percentile:101"]}, "percentile of candidate"),
    ({"candidates": ["mse:3"]}, "unknown calibration candidate"),
    ({"holdout": 0.9}, "holdout"),
    ({"score_samples": 0}, "score_samples"),
])
def test_bad_auto_options_are_clear_errors(options, message):
    with pytest.raises(PassError, match=message):
        _calibrated("auto", **options)


@pytest.mark.parametrize("data,message", [
    ({"x": np.zeros((0, 64), np.float32)}, "no samples"),
    ({"x": np.full((8, 64), np.nan, np.float32)}, "NaN"),
    ([], "no samples"),
])
def test_bad_data_is_still_a_clear_error_with_auto(data, message):
    model = _mlp()
    with pytest.raises(CalibrationError, match=message):
        PassManager([InsertQDQ(), Calibrate(method="auto")]).run(model, data=data, progress=False)


def test_nan_inside_the_model_names_the_tensor():
    model = _mlp()
    x = CALIB[:8].copy()
    x[5, :] = 3e38  # finite input, but fc1 overflows to ±inf
    with pytest.raises(CalibrationError, match="tensor '.*' holds NaN/Inf"):
        PassManager([InsertQDQ(), Calibrate(method="auto")]).run(model, data={"x": x}, progress=False)


def test_bias_correction_reuses_calibrates_float_statistics():
    data = {"x": CALIB}
    together = _mlp()
    report = PassManager([InsertQDQ(), Calibrate(method="minmax"), BiasCorrection()]).run(
        together, data=data, progress=False)
    assert report.records[2].result.stats["statistics"] == "calibrate's float statistics"
    alone = _mlp()
    PassManager([InsertQDQ(), Calibrate(method="minmax")]).run(alone, data=data, progress=False)
    separate = PassManager([BiasCorrection()]).run(alone, data=data, progress=False).records[0].result
    assert separate.stats["statistics"] == "float model"  # a new context: it measured them itself
    biases = [n.inputs[2].inputs[0].inputs[0].values for n in together.nodes("Gemm")]
    again = [n.inputs[2].inputs[0].inputs[0].values for n in alone.nodes("Gemm")]
    for a, b in zip(biases, again):
        assert np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))) <= 1


def test_quantize_defaults_to_auto_and_reports_the_winner():
    quantized, report = presso.quantize(_mlp(), {"x": CALIB}, progress=False, report=True)
    stats = report.records[1].result.stats
    assert stats["method"] == "auto" and stats["chosen"] in DEFAULT_CANDIDATES
    assert report.records[2].result.stats["statistics"] == "calibrate's float statistics"
    test = _samples(64, 5, [])
    expected = evaluate(_mlp(), {"x": test})["y"].argmax(1)
    got = evaluate(quantized, {"x": test}, optimization="all")["y"].argmax(1)
    assert np.mean(expected == got) >= 0.9


def test_mean_minmax_is_the_mean_of_per_sample_extremes():
    observer = RangeObserver(histogram=False)
    batch = np.array([[0.0, 1.0], [-2.0, 3.0], [-1.0, 5.0]], np.float32)
    observer.update(batch, samples=3)
    observer.update(np.array([[-3.0, 7.0]], np.float32), samples=1)
    assert observer.compute_range("mean-minmax", "uint8", False) == pytest.approx((-1.5, 4.0))
    assert observer.compute_range("minmax", "uint8", False) == (-3.0, 7.0)


def test_fast_histogram_matches_numpy():
    rng = np.random.default_rng(4)
    values = (rng.standard_normal(100_000) * 3).astype(np.float32)
    radius = float(np.abs(values).max())
    ours = _histogram(values, 2048, radius)
    reference, _ = np.histogram(values, bins=2048, range=(-radius, radius))
    assert ours.sum() == values.size
    assert np.abs(ours - reference).sum() <= 0.001 * values.size  # float rounding at bin edges only


def test_auto_leaves_float_means_for_later_passes():
    model = _mlp()
    from presso.passes import PassContext

    ctx = PassContext(progress=False)
    PassManager([InsertQDQ(), Calibrate(method="auto")]).run(model, data={"x": CALIB}, ctx=ctx)
    owner, means = ctx.shared[FLOAT_MEANS_KEY]
    assert owner == id(model) and set(means) == {"x", "r"}
    np.testing.assert_allclose(means["x"], CALIB[np.arange(128) % 4 != 3].mean(axis=0), atol=1e-5)


def test_a_model_with_label_outputs_is_scored_by_equal_labels():
    model = _mlp()
    labels = model.graph.layer(op="ArgMax", inputs=[model.graph.outputs[0]], outputs=["label"],
                               attrs={"axis": 1, "keepdims": 0})[0]
    labels.dtype, labels.shape = np.int64, ["N"]
    model.graph.outputs = [labels]
    model.invalidate()
    result = PassManager([InsertQDQ(), Calibrate(method="auto")]).run(
        model, data={"x": CALIB}, progress=False).records[1].result
    scores = result.stats["scores"]
    assert all(0 <= s["equal_pct"] <= 100 for s in scores.values())  # percent of equal labels
    assert scores[result.stats["chosen"]]["equal_pct"] == max(s["equal_pct"] for s in scores.values()) > 80
    assert "% equal outputs" in result.log[0]


def test_bias_correction_alone_on_a_fixed_batch_model():
    model = _mlp()
    model.graph.inputs[0].shape = [1, 64]
    model.graph.outputs[0].shape = [1, 10]
    PassManager([InsertQDQ(), Calibrate(method="minmax")]).run(model, data={"x": CALIB}, progress=False)
    result = PassManager([BiasCorrection()]).run(model, data={"x": CALIB}, progress=False).records[0].result
    assert result.stats["statistics"] == "float model" and result.stats["corrected"] == 2
