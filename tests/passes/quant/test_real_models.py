"""Real models from presso.tools.zoo through the quantization passes, on real data."""

import numpy as np
import pytest

import presso
from presso.ir import create_session, evaluate, load
from presso.passes import PassManager
from presso.passes.verify import compare_outputs
from presso.tools import zoo


@pytest.fixture(scope="module")
def magika_files():
    features, files = zoo.magika_dataset(256)
    if len(features) < 160:
        pytest.skip(f"only {len(features)} readable files on this machine")
    return features


@pytest.mark.slow  # ~23 s on two shared cores: auto calibration, then 2 × 192 magika runs
def test_magika_quantized_agrees_with_float_on_real_files(magika_files):
    model = load(zoo.magika_model())
    calibration, evaluation = magika_files[:64], magika_files[64:]
    quantized, report = presso.quantize(model, {"bytes": calibration}, progress=False, report=True)
    assert quantized.nodes("DequantizeLinear") and model is not quantized
    assert report.records[1].result.stats["chosen"]  # the default measures which range method to use
    # one onnxruntime thread: this CPU is shared, and its thread pool's spinning costs more than it saves
    expected = evaluate(model, {"bytes": evaluation}, threads=1)["target_label"].argmax(axis=1)
    got = evaluate(quantized, {"bytes": evaluation}, optimization="all", threads=1)["target_label"].argmax(axis=1)
    agreement = float(np.mean(expected == got))
    assert agreement >= 0.95, f"quantized magika agrees with float on {agreement:.1%} of {len(got)} real files"


def test_ppocr_cls_quantizes_from_opset_11_constants_and_loads():
    model = load(zoo.ppocr_cls_model())
    assert model.opset == 11 and model.nodes("Constant")  # ORT's quantizer trips on both
    images, labels = zoo.ppocr_cls_inputs(24)
    quantized = model.copy()
    PassManager.parse("insert-qdq{per_channel=true},calibrate{method=percentile},fold-qdq").run(
        quantized, data={"x": images[:16]}, progress=False)
    assert quantized.opset >= 13 and not quantized.nodes("Constant", "BatchNormalization")
    proto = quantized.to_proto()
    create_session(proto, optimization="all")  # loads with all of onnxruntime's int8 fusions
    int8 = [t for t in proto.graph.initializer if t.data_type == 3]  # INT8
    assert sum(np.prod(t.dims) for t in int8) > 90_000  # the conv weights are stored as int8
    feed = {"x": images[16:]}
    err = compare_outputs([evaluate(model, feed)], [evaluate(quantized, feed)])
    assert err.max_abs < 0.6 and err.cosine > 0.9, err


def test_ppocr_det_quantizes_and_runs_with_bounded_error():
    model = load(zoo.ppocr_det_model())
    images = zoo.ppocr_det_inputs(3, size=96)
    quantized = presso.quantize(model, {"x": images[:2]}, progress=False)
    create_session(quantized.to_proto(), optimization="all")
    feed = {"x": images[2:]}
    expected, got = evaluate(model, feed), evaluate(quantized, feed)
    err = compare_outputs([expected], [got])
    assert err.cosine > 0.9 and err.mean_abs < 0.05, err
    # the text mask that DB post-processing thresholds at 0.3 stays the same on most pixels
    name = model.output_names()[0]
    assert np.mean((expected[name] > 0.3) == (got[name] > 0.3)) > 0.95


def test_magika_weight_only_int4(magika_files):
    model = load(zoo.magika_model())
    quantized = model.copy()
    stats = PassManager.parse("quantize-weights{bits=4,block=32}").run(quantized).records[0].result.stats
    assert stats["matmuls"] == 2 and stats["weight_bytes_ratio"] <= 0.16
    feed = {"bytes": magika_files[:48]}
    expected = evaluate(model, feed)["target_label"].argmax(axis=1)
    got = evaluate(quantized, feed)["target_label"].argmax(axis=1)
    assert np.mean(expected == got) >= 0.9
