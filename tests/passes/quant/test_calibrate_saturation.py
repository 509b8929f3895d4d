"""`calibrate{clip_saturated=true}`: ranges stop where every consumer saturates.

A conv feeding MobileNetV3's decomposed hard-swish ``h · Clip(h + 3, 0, 6) / 6`` never needs
values below −3 (the gate is 0 there): narrowing the range to [−3, max] spends the 8-bit grid
where outputs change. Checked against onnxruntime: the hard-swish product gets more accurate,
the model output no worse, and a tensor with another reader keeps its whole range.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from presso.ir import evaluate, load
from presso.passes import PassManager
from presso.passes.quant.calibrate import Calibrate, _activation_groups, _policies
from presso.passes.quant.insert_qdq import InsertQDQ


def _const(name, value):
    return helper.make_tensor(name, TensorProto.FLOAT, np.shape(value), np.ravel(value))


def _hswish_net(second_reader: bool = False):
    """x → Conv → h → h·Clip(h+3, 0, 6)/6 → Conv → y (and h → Conv → z when second_reader)."""
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((8, 4, 3, 3)) * 0.6).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.5 - 4).astype(np.float32)  # most of h lies below −3
    w2 = (rng.standard_normal((4, 8, 1, 1)) * 0.4).astype(np.float32)
    inits = [_const("w1", w1), _const("b1", b1), _const("w2", w2), _const("three", np.float32(3)),
             _const("zero", np.float32(0)), _const("six", np.float32(6))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Add", ["h", "three"], ["h3"], name="add3"),
             helper.make_node("Clip", ["h3", "zero", "six"], ["gate"], name="relu6"),
             helper.make_node("Mul", ["h", "gate"], ["hg"], name="mul"),
             helper.make_node("Div", ["hg", "six"], ["hs"], name="div6"),
             helper.make_node("Conv", ["hs", "w2"], ["y"], name="conv2")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])]
    if second_reader:
        nodes.append(helper.make_node("Conv", ["h", "w2"], ["z"], name="conv3"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 8, 8]))
    graph = helper.make_graph(nodes, "hswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return load(proto)


def _inputs(seed):
    return np.random.default_rng(seed).standard_normal((64, 4, 8, 8)).astype(np.float32)


def _quantized(clip_saturated, second_reader=False):
    model = _hswish_net(second_reader)
    result = PassManager([InsertQDQ(), Calibrate(method="minmax", clip_saturated=clip_saturated)]).run(
        model, data={"x": _inputs(1)}, progress=False).records[1].result
    return model, result


def _low_end(model, name):
    spec = model.annotations.quant[name]
    return (0 - spec.zero_point[0]) * spec.scale[0]  # uint8: the value of integer 0


def _sqnr(reference, got):
    return 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - got).astype(np.float64) ** 2))


def test_hard_swish_input_is_narrowed_to_where_the_gate_opens():
    float_model = _hswish_net()
    observed = evaluate(float_model, {"x": _inputs(1)}, outputs=["h"])["h"].min()
    assert observed < -10  # the case is meaningful: most of the range would go below −3
    narrowed, result = _quantized(True)
    whole, _ = _quantized(False)
    assert result.stats["narrowed"] == 1
    assert -3.2 < _low_end(narrowed, "h") < -3.0  # −3 and one grid step below it
    assert _low_end(whole, "h") < -10
    test = {"x": _inputs(2)}
    reference = evaluate(float_model, test, outputs=["hg", "y"])
    fine = evaluate(narrowed, test, outputs=["hg"])["hg"]
    coarse = evaluate(whole, test, outputs=["hg"])["hg"]
    assert _sqnr(reference["hg"], fine) > _sqnr(reference["hg"], coarse) + 1.0  # the product is finer
    y_fine = evaluate(narrowed, test, optimization="all")["y"]
    y_coarse = evaluate(whole, test, optimization="all")["y"]
    assert _sqnr(reference["y"], y_fine) >= _sqnr(reference["y"], y_coarse) - 0.1  # int8 kernels agree


def test_a_tensor_with_another_reader_keeps_its_whole_range():
    model, result = _quantized(True, second_reader=True)
    assert result.stats["narrowed"] == 0
    assert _low_end(model, "h") < -10


def test_hard_sigmoid_input_limits():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 4, 1, 1))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a"),
             helper.make_node("HardSigmoid", ["a"], ["s"], alpha=0.2, beta=0.5, name="hsig"),
             helper.make_node("Conv", ["s", "w"], ["b"], name="conv_b"),
             helper.make_node("Clip", ["b", "lo", "hi"], ["c"], name="relu6"),
             helper.make_node("Conv", ["c", "w"], ["y"], name="conv_c")]
    graph = helper.make_graph(nodes, "limits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
                              [_const("w", w), _const("lo", np.float32(0)), _const("hi", np.float32(6))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    model = load(proto)
    PassManager([InsertQDQ()]).run(model)
    groups = _activation_groups(model)
    limits = {group["tensors"][0]: policy["limits"] for group, policy in
              zip(groups.values(), _policies(model, groups, True).values())}
    assert limits["a"] == pytest.approx((-2.5, 2.5))  # HardSigmoid(0.2, 0.5) is flat outside ±2.5
    assert limits["x"] == (-np.inf, np.inf)  # read by a Conv
    assert "b" not in limits  # a Clip after a conv is absorbed: its Q comes after the Clip
    unlimited = _policies(model, groups, False)
    assert all(p["limits"] == (-np.inf, np.inf) for p in unlimited.values())
