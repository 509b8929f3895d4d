"""Task metrics (presso.passes.quant.metrics): values against hand-computed ones, directions,
drops, callables, and scoring real models through onnxruntime."""

import numpy as np
import pytest

from presso import PressoError, load
from presso.ir import fix_input_shapes
from presso.passes.quant.metrics import METRICS, get_metric, model_outputs, score_models
from presso.passes.verify import nn_agreement
from presso.tools import zoo


def outputs(values, name="y"):
    return [{name: np.asarray(v, dtype=np.float32)} for v in values]


def test_top1_counts_rows_whose_argmax_agrees():
    reference = outputs([[[0.1, 0.9]], [[0.7, 0.3]], [[0.2, 0.8]]])
    candidate = outputs([[[0.6, 0.4]], [[0.8, 0.2]], [[0.3, 0.7]]])
    assert get_metric("top1")(reference, candidate) == pytest.approx(2 / 3)


def test_top1_falls_back_to_logits_and_rejects_scalar_outputs():
    logits = outputs([[[2.0, -1.0, 0.5]], [[0.0, 3.0, 1.0]]])
    shifted = outputs([[[2.0, -1.0, 2.5]], [[0.0, 3.0, 1.0]]])
    assert get_metric("top1")(logits, shifted) == 0.5
    with pytest.raises(PressoError, match="at least 2 classes"):
        get_metric("top1")(outputs([[1.0]]), outputs([[2.0]]))


def test_iou_thresholds_at_rapidocr_det_value():
    reference = outputs([[0.9, 0.31, 0.1, 0.0]])
    candidate = outputs([[0.9, 0.29, 0.5, 0.0]])
    # masks {0,1} and {0,2}: intersection 1, union 3
    assert get_metric("iou")(reference, candidate) == pytest.approx(1 / 3)
    assert get_metric("iou")(outputs([[0.0, 0.1]]), outputs([[0.2, 0.0]])) == 1.0  # both empty


def test_cosine_mse_and_sqnr_match_direct_formulas():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 10)).astype(np.float32)
    cand = ref + 0.1 * rng.standard_normal((4, 10)).astype(np.float32)
    reference, candidate = outputs(ref), outputs(cand)
    expected_cos = np.mean([np.dot(r, c) / np.linalg.norm(r) / np.linalg.norm(c) for r, c in zip(ref, cand)])
    assert get_metric("cosine")(reference, candidate) == pytest.approx(expected_cos, rel=1e-6)
    assert get_metric("mse")(reference, candidate) == pytest.approx(np.mean((ref.astype(np.float64) - cand) ** 2))
    expected_sqnr = np.mean([10 * np.log10(np.sum(r.astype(np.float64) ** 2) / np.sum((r - c.astype(np.float64)) ** 2))
                             for r, c in zip(ref, cand)])
    assert get_metric("sqnr")(reference, candidate) == pytest.approx(expected_sqnr, rel=1e-5)


def test_nn_is_verify_nn_agreement_over_all_samples():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((12, 8))
    cand = ref + 0.8 * rng.standard_normal((12, 8))
    reference = [{"e": ref[i:i + 1]} for i in range(12)]
    candidate = [{"e": cand[i:i + 1]} for i in range(12)]
    assert get_metric("nn")(reference, candidate) == nn_agreement(ref, cand)
    with pytest.raises(PressoError, match="at least 2 items"):
        get_metric("nn")(reference[:1], candidate[:1])


def test_directions_perfect_scores_and_drops():
    same = outputs([[[0.2, 0.8]], [[0.6, 0.4]]])
    for name, metric in METRICS.items():
        assert metric.reference_score(same) == pytest.approx(metric(same, same)), name
    mse, top1 = get_metric("mse"), get_metric("top1")
    assert not mse.higher_is_better and top1.higher_is_better
    assert mse.drop(0.0, 0.25) == 0.25 and top1.drop(1.0, 0.75) == 0.25
    assert top1.better(0.9, 0.8) and mse.better(0.1, 0.2)


def test_callable_metric_and_unknown_name():
    def worst_abs(reference, candidate):
        return max(float(np.max(np.abs(r["y"] - c["y"]))) for r, c in zip(reference, candidate))

    worst_abs.higher_is_better = False
    metric = get_metric(worst_abs)
    assert metric.name == "worst_abs" and not metric.higher_is_better
    assert metric(outputs([[1.0, 2.0]]), outputs([[1.5, 2.0]])) == 0.5
    assert metric.reference_score(outputs([[1.0, 2.0]])) == 0.0
    with pytest.raises(PressoError, match="unknown metric 'top5'"):
        get_metric("top5")
    with pytest.raises(PressoError, match="2 reference samples but 1"):
        get_metric("top1")(outputs([[[0.1, 0.9]], [[0.1, 0.9]]]), outputs([[[0.1, 0.9]]]))


def test_scores_real_cls_model_against_itself_and_a_perturbed_input():
    model = load(zoo.ppocr_cls_model())
    fix_input_shapes(model, {"x": [1, 3, 48, 192]})
    images, _ = zoo.ppocr_cls_inputs(8)
    data = [{"x": images[i:i + 1]} for i in range(8)]
    reference = model_outputs(model, data)
    assert len(reference) == 8 and reference[0][model.output_names()[0]].shape == (1, 2)
    assert score_models(model, model, data, "top1") == 1.0
    assert score_models(reference, model, data, "sqnr") >= 60  # the same model, maybe other kernels
    flipped = [{"x": images[i:i + 1, :, ::-1, ::-1].copy()} for i in range(8)]  # rotated 180°: the label flips
    assert get_metric("top1")(reference, model_outputs(model, flipped)) < 0.5
    assert len(model_outputs(model, data, samples=3, skip=2)) == 3
