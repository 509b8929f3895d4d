"""Per-layer sensitivity (presso.analyze.sensitivity) and the layer edits it relies on, on the
real PP-OCR cls model with 16 rendered text lines (a few layers, to stay fast)."""

import numpy as np
import pytest

import presso
from presso.ir import fix_input_shapes
from presso.passes.quant import layer_precision as lp
from presso.passes.quant.metrics import get_metric, model_outputs
from presso.passes.quant.sensitivity import quantize_for_analysis
from presso.passes.verify import compare_outputs
from presso.tools import zoo

LAYERS = ["Conv@0", "Conv@5", "Add@0"]


@pytest.fixture(scope="module")
def cls():
    model = presso.load(zoo.ppocr_cls_model())
    fix_input_shapes(model, {"x": [1, 3, 48, 192]})
    images, _ = zoo.ppocr_cls_inputs(24, seed=7)
    calibration = [{"x": images[i:i + 1]} for i in range(16)]
    evaluation = [{"x": images[i:i + 1]} for i in range(16, 24)]
    return model, calibration, evaluation


@pytest.fixture(scope="module")
def quantized(cls):
    model, calibration, _ = cls
    return quantize_for_analysis(model, calibration, method="minmax")


def test_every_layer_float_reproduces_the_float_model(cls, quantized):
    model, _, evaluation = cls
    qdq, reference = quantized
    restored = qdq.copy()
    lp.leave_float(restored, lp.layer_names(qdq), reference=reference)
    assert not restored.nodes("QuantizeLinear", "DequantizeLinear")
    error = compare_outputs(model_outputs(model, evaluation), model_outputs(restored, evaluation))
    assert error.max_abs < 1e-4  # biases as before bias-correction, no layer left rounded


def test_sensitivity_columns_are_the_metric_of_the_edited_models(cls, tmp_path):
    model, calibration, _ = cls
    evaluation = calibration[:8]  # samples that minmax calibration saw: its ranges must cover them
    report = presso.analyze.sensitivity(model, calibration, eval_data=evaluation, metric="sqnr", samples=8,
                                        method="minmax", layers=LAYERS, cache=tmp_path, progress=False)
    assert sorted(row.name for row in report.layers) == sorted(LAYERS) and report.samples == 8
    qdq, reference = quantize_for_analysis(model, calibration, method="minmax")
    sqnr = get_metric("sqnr")
    ref_out = model_outputs(reference, evaluation)
    assert report.int8_score == pytest.approx(sqnr(ref_out, model_outputs(qdq, evaluation)), abs=1e-6)
    for row in report.layers:
        alone = qdq.copy()
        lp.quantize_only(alone, row.name, reference)
        assert row.only_quantized_drop == pytest.approx(
            sqnr.drop(sqnr.reference_score(ref_out), sqnr(ref_out, model_outputs(alone, evaluation))), abs=1e-6)
        # one layer's rounding costs less than every layer's
        assert row.only_quantized_drop < report.int8_drop
        assert row.only_float_sqnr is not None and np.isfinite(row.only_float_sqnr)
    conv = next(n for n in reference.graph.nodes if n.name == "Conv@0")
    weight = np.asarray(conv.inputs[1].values)
    first = next(row for row in report.layers if row.name == "Conv@0")
    assert first.weight_range == pytest.approx((weight.min(), weight.max()))
    assert first.weight_outlier >= 1.0 and first.activation_outlier >= 1.0
    low, high = first.calibrated_range
    step = (high - low) / 255
    assert low <= first.activation_range[0] + step and high >= first.activation_range[1] - step  # minmax covers
    assert "Conv@0" in report.table() and "SQNR alone" in report.table()


def test_sensitivity_is_cached_per_model_data_and_options(cls, tmp_path):
    model, calibration, evaluation = cls
    options = dict(eval_data=evaluation, samples=4, method="minmax", layers=["Conv@0"], ranges=False,
                   only_float=False, cache=tmp_path, progress=False)
    first = presso.analyze.sensitivity(model, calibration, metric="top1", **options)
    again = presso.analyze.sensitivity(model, calibration, metric="top1", **options)
    assert not first.cached and again.cached
    assert again.layers[0].only_quantized_sqnr == pytest.approx(first.layers[0].only_quantized_sqnr)
    assert len(list(tmp_path.glob("*.json"))) == 1
    other = presso.analyze.sensitivity(model, calibration, metric="cosine", **options)
    assert not other.cached and len(list(tmp_path.glob("*.json"))) == 2
    assert first.layers[0].name == "Conv@0" and first.layers[0].only_float_drop is None


def test_unknown_layer_is_an_error(quantized):
    qdq, _ = quantized
    with pytest.raises(presso.PassError, match="unknown quantized layer"):
        lp.apply_precision(qdq.copy(), {"NoSuchConv": "float"})
    with pytest.raises(presso.PassError, match="unknown precision level"):
        lp.apply_precision(qdq.copy(), {"Conv@0": "int3"})
