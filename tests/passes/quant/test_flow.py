"""insert-qdq → calibrate → fold-qdq on tiny graphs, checked against onnxruntime."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from quant_graphs import conv_net
from presso.ir import evaluate
from presso.ir.errors import CalibrationError, PassError
from presso.passes import PassManager
from presso.passes.quant.calibrate import Calibrate
from presso.passes.quant.fold_qdq import FoldQDQ
from presso.passes.quant.insert_qdq import InsertQDQ
from presso.passes.quant.observers import RangeObserver
from presso.passes.verify import compare_outputs


def _quantized(model, data, *, method="minmax", **options):
    PassManager([InsertQDQ(**options), Calibrate(method=method)]).run(model, data=data, progress=False)
    return model


def _producer_op(tensor):
    return tensor.inputs[0].op if tensor.inputs else None


def test_pipeline_text_builds_the_same_passes():
    passes = PassManager.parse("insert-qdq{activations=int8,per_channel=false,exclude=[fc]},"
                               "calibrate{method=entropy,samples=8,batch=4},fold-qdq{qoperator=true}").passes
    assert [p.name for p in passes] == ["insert-qdq", "calibrate", "fold-qdq"]
    assert passes[0].activations == "int8" and passes[0].exclude == ["fc"] and passes[1].samples == 8


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_fake_quant_error_is_bounded(conv_model, conv_data, method):
    reference = conv_model.copy()
    _quantized(conv_model, conv_data, method=method)
    feeds = [{"x": conv_data["x"][i:i + 4]} for i in range(0, 16, 4)]
    err = compare_outputs([evaluate(reference, f) for f in feeds], [evaluate(conv_model, f) for f in feeds])
    assert err.sqnr_db > 25, err
    assert err.cosine > 0.99


def test_placement_rules(conv_model, conv_data):
    _quantized(conv_model, conv_data)
    g = conv_model
    # one shared pair for p1 (read by conv2 and the residual Add)
    pool_out = next(n for n in g.nodes("MaxPool")).outputs[0]
    q_on_pool = [c for c in pool_out.outputs if c.op == "QuantizeLinear"]
    assert len(q_on_pool) == 1
    # MaxPool passes quantization through: its output Q shares its input's scale constant
    pool = next(n for n in g.nodes("MaxPool"))
    assert _producer_op(pool.inputs[0]) == "DequantizeLinear"
    assert pool.inputs[0].inputs[0].inputs[1] is q_on_pool[0].inputs[1]
    # Relu after conv1 is absorbed: conv1's output has no Q of its own
    conv1 = g.node("conv1")
    assert all(c.op == "Relu" for c in conv1.outputs[0].outputs)
    # per-channel int8 weights along Conv axis 0 and Gemm's output axis (transB=0 → axis 1)
    w_dq = conv1.inputs[1].inputs[0]
    assert w_dq.attrs["axis"] == 0 and w_dq.inputs[1].values.shape == (8,)
    fc_dq = g.node("fc").inputs[1].inputs[0]
    assert fc_dq.attrs["axis"] == 1 and fc_dq.inputs[1].values.shape == (5,)
    # bias: int32, scale = input scale × weight scale
    bias_dq = conv1.inputs[2].inputs[0]
    assert bias_dq.inputs[0].values.dtype == np.int32
    s_in = conv1.inputs[0].inputs[0].inputs[1].values
    np.testing.assert_allclose(bias_dq.inputs[1].values, s_in * w_dq.inputs[1].values, rtol=1e-6)
    # annotations record the spec of each quantized tensor and survive save → load
    spec = g.annotations.quant["x"]
    assert spec.dtype == "uint8" and spec.scale and spec.scale[0] > 0 and spec.method == "minmax"
    assert g.copy().annotations.quant["x"] == spec


def test_concat_inputs_share_a_scale_when_the_scheme_requires_it():
    import onnx
    from onnx import TensorProto, helper

    from presso.ir import load
    nodes = [helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Sigmoid", ["b"], ["sb"]),
             helper.make_node("Concat", ["ra", "sb"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    rng = np.random.default_rng(0)
    data = {"a": rng.standard_normal((8, 4)).astype(np.float32) * 5, "b": rng.standard_normal((8, 4)).astype(np.float32)}
    _quantized(model, data, scheme="int8-symmetric")
    concat = model.nodes("Concat")[0]
    scales = {t.inputs[0].inputs[1].name for t in concat.inputs}
    assert len(scales) == 1
    assert onnx.checker.check_model(model.to_proto()) is None


def test_constant_weights_and_opset_11_are_prepared():
    model = conv_net(opset=11, weights_in_constants=True)
    reference = model.copy()
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)}
    _quantized(model, data, per_channel=True)
    assert model.opset >= 13 and not model.nodes("Constant")
    PassManager([FoldQDQ()]).run(model)  # check_load: onnxruntime loads it
    err = compare_outputs([evaluate(reference, data)], [evaluate(model, data)])
    assert err.cosine > 0.99


@pytest.mark.parametrize("options", [{}, {"activations": "int8"}, {"weights": "int4", "activations": "uint8"},
                                     {"activations": "uint16"}])
def test_fold_equals_the_fake_quant_model(conv_model, conv_data, options):
    _quantized(conv_model, conv_data, **options)
    fake = conv_model.copy()
    result = PassManager([FoldQDQ()], verify=True).run(conv_model, data=conv_data).records[0]
    assert result.result.stats["weights_folded"] == 3
    for feed in [{"x": conv_data["x"][:4]}, {"x": conv_data["x"][4:12]}]:
        np.testing.assert_array_equal(evaluate(fake, feed)["y"], evaluate(conv_model, feed)["y"])
    weights = [n.inputs[0] for n in conv_model.nodes("DequantizeLinear") if isinstance(n.inputs[0], gs.Constant)]
    assert all(w.values.dtype.kind in "iu" or "int" in str(w.values.dtype) for w in weights)
    assert not [q for q in conv_model.nodes("QuantizeLinear") if isinstance(q.inputs[0], gs.Constant)]


def test_qoperator_form_matches_with_int8_activations(conv_model, conv_data, matmul_model, matmul_data):
    for model, data in [(conv_model, conv_data), (matmul_model, matmul_data)]:
        _quantized(model, data, activations="int8")
        fake = model.copy()
        stats = PassManager([FoldQDQ(qoperator=True)]).run(model).records[0].result.stats
        assert stats["qlinearconv"] + stats["qlinearmatmul"] >= 2
        feed = {"x": data["x"][:4]}
        np.testing.assert_allclose(evaluate(model, feed)["y"], evaluate(fake, feed)["y"], atol=1e-5)


def test_weight_scales_come_from_values_not_data(conv_model, conv_data):
    _quantized(conv_model, conv_data)
    w_dq = conv_model.node("conv2").inputs[1].inputs[0]
    w = w_dq.inputs[0].inputs[0].inputs[0].values  # DQ ← Q ← float weight
    np.testing.assert_allclose(w_dq.inputs[1].values, np.abs(w).reshape(8, -1).max(axis=1) / 127, rtol=1e-6)


# ---- bad data ------------------------------------------------------------------------------
def _inserted(model):
    PassManager([InsertQDQ()]).run(model)
    return model


@pytest.mark.parametrize("data,message", [
    ({"x": np.zeros((0, 3, 16, 16), np.float32)}, "no samples"),
    ({"input": np.zeros((2, 3, 16, 16), np.float32)}, "no array for input"),
    ({"x": np.zeros((2, 3, 16), np.float32)}, "rank"),
    ({"x": np.zeros((2, 4, 16, 16), np.float32)}, "axis 1"),
    ({"x": np.zeros((2, 3, 16, 16), np.int64)}, "dtype"),
    ({"x": np.full((2, 3, 16, 16), np.nan, np.float32)}, "NaN"),
    ([], "no samples"),
])
def test_bad_calibration_data_is_a_clear_error(conv_model, data, message):
    _inserted(conv_model)
    with pytest.raises(CalibrationError, match=message):
        PassManager([Calibrate()]).run(conv_model, data=data, progress=False)


def test_constant_tensors_get_a_safe_scale_or_an_error(conv_model):
    _inserted(conv_model)
    zeros = {"x": np.zeros((4, 3, 16, 16), np.float32)}
    with pytest.raises(CalibrationError, match="single value"):
        PassManager([Calibrate(on_constant="error")]).run(conv_model.copy(), data=zeros, progress=False)
    result = PassManager([Calibrate()]).run(conv_model, data=zeros, progress=False).records[0].result
    assert result.stats["constant_tensors"] > 0
    scales = [n.inputs[1].values for n in conv_model.nodes("QuantizeLinear")]
    assert all(np.all(s > 0) and np.all(np.isfinite(s)) for s in scales)


def test_calibrate_without_qdq_and_insert_twice_are_errors(conv_model, conv_data):
    with pytest.raises(PassError, match="insert-qdq"):
        PassManager([Calibrate()]).run(conv_model, data=conv_data, progress=False)
    _inserted(conv_model)
    with pytest.raises(PassError, match="already"):
        PassManager([InsertQDQ()]).run(conv_model)


def test_observer_memory_does_not_grow_with_samples():
    rng = np.random.default_rng(0)
    observer = RangeObserver(histogram=True)
    sizes = set()
    for i in range(50):
        observer.update(rng.standard_normal(1000) * (i + 1))  # the range keeps growing
        sizes.add(observer.hist.size)
    assert sizes == {observer.bins}
    assert observer.hist.sum() == 50 * 1000
    lo, hi = observer.compute_range("minmax", "int8", True)
    assert hi == observer.max and lo == observer.min


def test_opset_11_without_prepare_is_refused_not_written_unloadable():
    model = conv_net(opset=11)
    with pytest.raises(PassError, match="opset"):
        PassManager([InsertQDQ(prepare=False)]).run(model)


def test_exclude_keeps_nodes_float(conv_model, conv_data):
    _quantized(conv_model, conv_data, exclude=["fc", "conv[0-9]"])
    assert not [c for c in conv_model.node("fc").inputs if c.inputs and c.inputs[0].op == "DequantizeLinear"]
    assert conv_model.node("conv1").inputs[1].inputs == []  # float weight, no DQ
