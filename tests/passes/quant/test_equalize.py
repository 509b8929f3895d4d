"""`equalize`: cross-layer equalization keeps the float function and balances weight ranges."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from presso.ir import evaluate, load
from presso.ir.errors import PassError
from presso.passes import PassManager
from presso.passes.verify import metrics
from presso.tools import zoo


def _chain(activation: str, *, depthwise: bool = True, bias: bool = True, seed: int = 0):
    """x → Conv 3×3 (8 channels with ranges spread over 1000×) → activation → depthwise or 1×1 Conv."""
    rng = np.random.default_rng(seed)
    # as after BatchNorm folding: channel c of conv1 scaled by k_c, conv2 reading it by 1 / k_c,
    # so every channel matters as much downstream
    k = np.logspace(-2, 1, 8, dtype=np.float32)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * k[:, None, None, None]
    if depthwise:
        w2 = (rng.standard_normal((8, 1, 3, 3)) / k[:, None, None, None]).astype(np.float32)
    else:
        w2 = (rng.standard_normal((4, 8, 1, 1)) / k[None, :, None, None]).astype(np.float32)
    inits = [helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel()),
             helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel())]
    conv1_inputs = ["x", "w1"]
    if bias:
        inits.append(helper.make_tensor("b1", TensorProto.FLOAT, [8], rng.standard_normal(8).astype(np.float32) * 0.1))
        conv1_inputs.append("b1")
    nodes = [helper.make_node("Conv", conv1_inputs, ["h"], pads=[1, 1, 1, 1], name="conv1")]
    if activation == "relu6":
        inits += [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
        nodes.append(helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="relu6"))
    elif activation == "relu":
        nodes.append(helper.make_node("Relu", ["h"], ["a"], name="relu"))
    elif activation == "leaky":
        nodes.append(helper.make_node("LeakyRelu", ["h"], ["a"], name="leaky", alpha=0.1))
    else:  # conv → conv
        nodes[0].output[0] = "a"
    conv2 = {"pads": [1, 1, 1, 1], "group": 8} if depthwise else {}
    nodes.append(helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2", **conv2))
    out_channels = 8 if depthwise else 4
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, 12, 12])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return load(proto)


def _images(n, seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 12, 12)).astype(np.float32) * 2}


def _equalize(model, pipeline="equalize"):
    return PassManager.parse(pipeline, verify=True).run(model, progress=False).records[0].result


@pytest.mark.parametrize("activation,depthwise", [("relu", True), ("relu6", True), ("relu", False), ("none", False)])
def test_equalize_keeps_outputs_and_balances_channel_ranges(activation, depthwise):
    model = _chain(activation, depthwise=depthwise)
    x = _images(4)
    before = evaluate(model, x)["y"]
    w1_before = np.asarray(model.graph.tensors()["w1"].values)
    result = _equalize(model)
    assert result.stats["chains"] == 1
    after = evaluate(model, x)["y"]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    conv1 = next(n for n in model.nodes("Conv") if n.name == "conv1")
    ranges_before = np.abs(w1_before).reshape(8, -1).max(1)
    ranges_after = np.abs(np.asarray(conv1.inputs[1].values)).reshape(8, -1).max(1)
    spread = lambda r: r.max() / r.min()  # noqa: E731
    assert spread(ranges_after) < spread(ranges_before) / 10, (ranges_before, ranges_after)
    if activation == "relu6":  # Clip(0, 6) became Relu + a per-channel Min
        assert not model.nodes("Clip") and model.nodes("Min") and result.stats["relu6_split"] == 1


def test_equalize_makes_per_tensor_int8_weights_more_accurate():
    # the paper's case: one scale per weight tensor, channels of very different ranges
    errors = []
    x_cal, x_eval = _images(32, 2), _images(16, 3)
    for pipeline in ["insert-qdq{per_channel=false},calibrate,fold-qdq",
                     "equalize,insert-qdq{per_channel=false},calibrate,fold-qdq"]:
        model = _chain("relu")
        reference = evaluate(model, x_eval)["y"]
        PassManager.parse(pipeline).run(model, data=x_cal, progress=False)
        errors.append(metrics(reference, evaluate(model, x_eval, optimization="all")["y"]).sqnr_db)
    assert errors[1] > errors[0] + 10, errors  # at least 10 dB better


def test_equalize_skips_and_reports_chains_it_cannot_handle():
    model = _chain("leaky")
    result = _equalize(model)
    assert result.stats["chains"] == 0 and result.stats["skipped"] == 1
    assert any("LeakyRelu" in line and "homogeneous" in line for line in result.log)
    model = _chain("relu6")
    result = _equalize(model, "equalize{relu6=skip}")
    assert result.stats["chains"] == 0 and any("relu6=skip" in line for line in result.log)
    assert model.nodes("Clip")


def test_equalize_refuses_a_quantized_model():
    model = _chain("relu")
    PassManager.parse("insert-qdq,calibrate").run(model, data=_images(4), progress=False)
    with pytest.raises(PassError, match="before insert-qdq"):
        _equalize(model)


@pytest.mark.parametrize("name", ["cls", "det"])
def test_equalize_keeps_ppocr_outputs(name):
    if name == "cls":
        model, x = load(zoo.ppocr_cls_model()), zoo.ppocr_cls_inputs(4)[0]
    else:
        model, x = load(zoo.ppocr_det_model()), zoo.ppocr_det_inputs(1, size=160)
    feeds = {model.graph.inputs[0].name: x}
    before = evaluate(model, feeds)
    result = _equalize(model)  # verify=True: the manager also compares with the model before the pass
    assert result.stats["chains"] >= 5
    spread_before, spread_after = result.stats["weight_range_spread"]
    assert spread_after < spread_before
    after = evaluate(model, feeds)
    for key, value in before.items():
        np.testing.assert_allclose(after[key], value, rtol=1e-3, atol=1e-4 * max(np.abs(value).max(), 1.0))
    if name == "cls":  # its hard-swish chains are not homogeneous: skipped and listed
        assert result.stats["skipped"] > 0 and any(line.startswith("skipped") for line in result.log)
