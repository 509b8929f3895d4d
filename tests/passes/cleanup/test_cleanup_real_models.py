"""Real models: the onnx light architectures, magika and PP-OCR det/cls through the cleanup pipeline.

Each model loads, round-trips through save with identical outputs, and keeps its outputs
through the cleanup pipeline. References come from onnxruntime on the original file. The
light models' weights are ConstantOfShape fills (every weight 0.02), so the graph outputs
(a softmax) are nearly uniform; the pre-softmax logits are compared too, which any error in
folding would move.
"""

from __future__ import annotations

import gc

import numpy as np
import onnx
import pytest
from _graphs import reference

from presso.ir import evaluate, fix_input_shapes, load, save
from presso.ir.analysis.cost import compute_cost
from presso.passes import PassManager
from presso.tools import zoo

CLEANUP = "constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,eliminate-dead-code"


def _assert_same_model(a, b) -> None:
    """The same graph and the same weight values (saving may store data as raw bytes where the
    original used typed fields)."""
    pa, pb = a.to_proto(), b.to_proto()
    weights_a = {t.name: onnx.numpy_helper.to_array(t) for t in pa.graph.initializer}
    weights_b = {t.name: onnx.numpy_helper.to_array(t) for t in pb.graph.initializer}
    assert weights_a.keys() == weights_b.keys()
    for name, value in weights_a.items():
        np.testing.assert_array_equal(value, weights_b[name], err_msg=name)
    del pa.graph.initializer[:], pb.graph.initializer[:]
    assert pa.SerializeToString() == pb.SerializeToString()


def _max_rel(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(expected.astype(np.float64) - actual)) / max(np.max(np.abs(expected)), 1e-30))


def _logits_name(model) -> str | None:
    softmax = model.nodes("Softmax")
    return softmax[0].inputs[0].name if softmax else None


@pytest.mark.parametrize("name", zoo.LIGHT_MODELS)
def test_light_model(name, tmp_path, free_memory):
    path = zoo.light_model(name)
    model = load(path)
    (spec,) = model.graph.inputs
    x = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    logits = _logits_name(model)
    wanted = [model.output_names()[0]] + ([logits] if logits else [])
    expected = reference(onnx.load(str(path)), {spec.name: x}, wanted)

    # save → load reproduces the model exactly, so its outputs are identical
    copy = load(save(model, tmp_path / "copy.onnx"))
    _assert_same_model(copy, model)
    del copy

    report = PassManager.parse(CLEANUP).run(model)
    folded = [n.op for n in model.graph.nodes]
    assert not {"ConstantOfShape", "BatchNormalization", "Dropout", "Identity"} & set(folded), folded
    assert report.records[1].changed  # the ConstantOfShape weights became initializers
    # the reference runs without graph optimizations (fused kernels round differently)
    got = evaluate(model, {spec.name: x}, [model.output_names()[0]] + ([_logits_name(model)] if logits else []))
    for key, value in zip(wanted, got.values()):
        assert _max_rel(expected[key], value) < 1e-4, key
    if name == "resnet50":  # published: 25.6 M parameters, 4.1 G multiply-adds at 224×224
        cost = compute_cost(model)
        assert 25.4e6 < cost.params < 25.7e6 and 3.8e9 < cost.macs < 4.2e9, (cost.params, cost.macs)
    if sum(t.values.nbytes for t in model.initializers().values()) < 10 * 2**20:  # spare disk and time
        again = load(save(model, tmp_path / "folded.onnx"))
        _assert_same_model(again, model)
    del model, report
    gc.collect()


def _check_real(path, shapes, feeds_list, *, rtol=1e-4, verify=False):
    """Cleanup on a real model with fixed shapes; returns (model, report, expected, got)."""
    original = onnx.load(str(path))
    model = load(path)
    fix_input_shapes(model, shapes)
    expected = [reference(original, feeds) for feeds in feeds_list]
    report = PassManager.parse(CLEANUP, verify=verify, rtol=rtol).run(model, data=feeds_list)
    got = [evaluate(model, feeds) for feeds in feeds_list]
    for want, have in zip(expected, got):
        for key in want:
            assert _max_rel(want[key], have[key]) <= rtol, key
    return model, report, expected, got


def test_ppocr_det_folds_every_batchnorm_on_real_images(tmp_path):
    images = zoo.ppocr_det_inputs(2, size=320)
    feeds = [{"x": images[i:i + 1]} for i in range(2)]
    model, report, expected, got = _check_real(zoo.ppocr_det_model(), {"x": [1, 3, 320, 320]}, feeds)
    assert not model.nodes("BatchNormalization") and not model.nodes("Constant")
    stats = {k: v for r in report.records for k, v in r.result.stats.items()}
    # two into Conv; the head's ConvTranspose → Add(bias) → BN folds into the ConvTranspose
    assert (stats["folded"], stats["into_convtranspose"], stats["to_mul_add"]) == (3, 1, 0)
    assert len(model.graph.nodes) < report.records[0].nodes_before / 2
    again = evaluate(load(save(model, tmp_path / "det.onnx")), feeds[0])
    np.testing.assert_array_equal(next(iter(again.values())), next(iter(got[0].values())))


def test_ppocr_cls_keeps_predictions():
    images, labels = zoo.ppocr_cls_inputs(4)
    feeds = [{"x": images}]
    # verify=True: the manager checks every pass on these real images (a static batch of 4)
    model, report, expected, got = _check_real(zoo.ppocr_cls_model(), {"x": [4, 3, 48, 192]}, feeds, verify=True)
    assert all(r.result.error.max_rel < 1e-4 for r in report.records)
    assert not model.nodes("BatchNormalization")
    (want,), (have,) = expected[0].values(), got[0].values()
    np.testing.assert_array_equal(want.argmax(1), have.argmax(1))


def test_magika_on_real_files():
    features, _ = zoo.magika_dataset(8)
    feeds = [{"bytes": features[i:i + 4]} for i in (0, 4)]
    model, report, expected, got = _check_real(zoo.magika_model(), {"bytes": [4, 2048]}, feeds)
    for want, have in zip(expected, got):
        (w,), (h,) = want.values(), have.values()
        np.testing.assert_array_equal(w.argmax(-1), h.argmax(-1))
