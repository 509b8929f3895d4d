"""`adaround`: learned rounding lowers each layer's output error on held-out rows."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from presso.ir import evaluate, load
from presso.ir.errors import PassError
from presso.passes import PassManager
from presso.passes.quant.qdq import qparams
from presso.passes.verify import metrics
from presso.tools import zoo

pytest.importorskip("torch", reason="adaround needs torch: pip install 'presso[train]'")


def _matmul_model(seed=0):
    """x [N, 16, 32] → MatMul [32, 24] → Add bias: one weight layer."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((32, 24)).astype(np.float32) * 0.3
    b = rng.standard_normal(24).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"), helper.make_node("Add", ["h", "b"], ["y"], name="bias")],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 24])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()), helper.make_tensor("b", TensorProto.FLOAT, [24], b)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    onnx.checker.check_model(proto)
    return load(proto)


def _correlated_tokens(n, seed):
    """Inputs whose channels are strongly correlated: where round-to-nearest's errors add up."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(42).standard_normal((4, 32)).astype(np.float32)
    return {"x": (rng.standard_normal((n, 16, 4)).astype(np.float32) @ mix
                  + 0.05 * rng.standard_normal((n, 16, 32)).astype(np.float32))}


def _weight_integers(model, node_name):
    node = next(n for n in model.graph.nodes if n.name == node_name)
    dq = node.inputs[1].inputs[0]
    return np.asarray(dq.inputs[0].values), qparams(dq)


def test_adaround_beats_round_to_nearest_on_a_matmul_with_4_bit_weights():
    calib, evals = _correlated_tokens(32, 1), _correlated_tokens(16, 2)
    errors = {}
    for name, pipeline in [("nearest", "insert-qdq{weights=int4,ops=[MatMul]},calibrate"),
                           ("adaround", "insert-qdq{weights=int4,ops=[MatMul]},calibrate,adaround{iterations=300,rows=1024}")]:
        model = _matmul_model()
        reference = evaluate(model, evals)["y"]
        report = PassManager.parse(pipeline + ",fold-qdq").run(model, data=calib, progress=False)
        errors[name] = 1 - metrics(reference, evaluate(model, evals)["y"]).cosine
        if name == "adaround":
            stats = report.records[2].result.stats
            assert stats["layers"] == 1 and stats["mean_error_adaround"] < stats["mean_error_nearest"]
            assert "relative output error" in report.records[2].result.log[0]
            ints, params = _weight_integers(model, "proj")
            assert params.dtype == "int4"  # still on the calibrated grid, stored as 4-bit integers
    assert errors["adaround"] < 0.7 * errors["nearest"], errors


def test_adaround_on_magika_lowers_its_matmul_errors_on_real_files():
    features, _ = zoo.magika_dataset(40)
    if len(features) < 40:
        pytest.skip(f"only {len(features)} readable files on this machine")
    model = load(zoo.magika_model())
    data = {"bytes": features[:16]}
    PassManager.parse("insert-qdq,calibrate{method=minmax}").run(model, data=data, progress=False)
    report = PassManager.parse("adaround{iterations=60,rows=512}").run(model, data=data, progress=False)
    result = report.records[0].result
    assert result.stats["layers"] >= 2
    assert result.stats["mean_error_adaround"] < result.stats["mean_error_nearest"], result.stats
    assert len([line for line in result.log if "relative output error" in line]) == result.stats["layers"]
    PassManager.parse("fold-qdq").run(model, progress=False)
    evals = {"bytes": features[16:]}
    expected = evaluate(load(zoo.magika_model()), evals)["target_label"].argmax(-1)
    assert np.mean(evaluate(model, evals)["target_label"].argmax(-1) == expected) >= 0.8


@pytest.mark.slow  # ~30 s on two shared cores
def test_adaround_on_ppocr_cls_lowers_layer_errors_and_keeps_the_grid():
    model = load(zoo.ppocr_cls_model())
    images, _ = zoo.ppocr_cls_inputs(8)
    data = [{"x": images[i:i + 2]} for i in range(0, 8, 2)]
    PassManager.parse("insert-qdq,calibrate{method=minmax}").run(model, data=data, progress=False)
    nearest = model.copy()
    report = PassManager.parse("adaround{iterations=40,rows=512,batch_rows=128,sequential=false}").run(model, data=data, progress=False)
    stats = report.records[0].result.stats
    assert stats["layers"] >= 40  # PP-OCR cls: 53 convs and a Gemm
    assert stats["kept_nearest"] < stats["layers"]
    assert stats["mean_error_adaround"] < 0.99 * stats["mean_error_nearest"], stats
    # a rewritten weight lies on its grid, each integer within ±1 of round-to-nearest's;
    # a layer that kept round-to-nearest keeps its float weight
    rewritten = 0
    for node in model.nodes("Conv"):
        q = node.inputs[1].inputs[0].inputs[0].inputs[0]
        twin = next(n for n in nearest.graph.nodes if n.name == node.name)
        q_before = twin.inputs[1].inputs[0].inputs[0].inputs[0]
        if q.inputs[0] is q_before.inputs[0] or q.inputs[0].name == q_before.inputs[0].name:
            continue
        scale = np.asarray(qparams(q).scale.values).reshape(-1, 1, 1, 1)
        w_new = np.asarray(q.inputs[0].values) / scale
        w_old = np.asarray(q_before.inputs[0].values) / scale
        np.testing.assert_allclose(w_new, np.round(w_new), atol=1e-3)
        assert np.all(np.abs(np.round(w_new) - np.round(w_old)) <= 1)
        rewritten += 1
    assert rewritten >= stats["layers"] - stats["kept_nearest"] - 1  # (the Gemm is not a Conv)
    x = {"x": zoo.ppocr_cls_inputs(4, seed=7)[0]}
    float_out = evaluate(load(zoo.ppocr_cls_model()), x)
    PassManager.parse("fold-qdq").run(model, progress=False)
    assert metrics(list(float_out.values())[0], list(evaluate(model, x).values())[0]).cosine > 0.95


def test_adaround_errors():
    model = _matmul_model()
    with pytest.raises(PassError, match="insert-qdq"):
        PassManager.parse("adaround").run(model, data=_correlated_tokens(4, 0), progress=False)
    PassManager.parse("insert-qdq,calibrate").run(model, data=_correlated_tokens(4, 0), progress=False)
    with pytest.raises(PassError, match="warmup"):
        PassManager.parse("adaround{warmup=1.5}").run(model, data=_correlated_tokens(4, 0), progress=False)
    with pytest.raises(PassError, match="calibration data"):
        PassManager.parse("adaround").run(model, progress=False)
