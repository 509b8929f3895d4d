"""Lowering a Q/DQ model to integer ops: fixed-point multipliers, op selection, errors."""

import numpy as np
import pytest
from mcu_models import calibration, conv_net, mlp, quantize
from onnx import TensorProto, helper

from presso.backends.mcu.codegen import unsupported_nodes
from presso.backends.mcu.lower import lower, quantize_multiplier, requantize_reference
from presso.ir import BackendError, Model


@pytest.mark.parametrize("real", [1e-9, 3.7e-5, 0.00390625, 0.1234567, 0.5, 0.999999, 1.0, 3.3, 1234.5])
def test_quantize_multiplier_represents_the_real_factor(real):
    m, s = quantize_multiplier(real)
    assert 2**30 <= m < 2**31 or real < 2.0**-31
    assert 1 <= s <= 62
    assert abs(m * 2.0**-s - real) <= real * 2.0**-30 + 2.0**-62


def test_requantization_matches_rounded_real_product():
    rng = np.random.default_rng(0)
    acc = rng.integers(-2**24, 2**24, size=5000)
    for real in (0.00123, 0.0371, 0.75):
        m, s = quantize_multiplier(real)
        got = ((acc.astype(np.int64) * m + (1 << (s - 1))) >> s) + 3
        want = np.floor(acc * real + 0.5) + 3
        assert np.abs(got - want).max() <= 1
        assert np.mean(got == want) > 0.999
        clamped = requantize_reference(acc, m, s, 3)
        assert clamped.dtype == np.int8 and clamped.min() >= -128


@pytest.fixture(scope="module")
def conv_program():
    f = conv_net()
    return lower(quantize(f, calibration(f)))


def test_conv_net_lowers_to_integer_kernels(conv_program):
    kinds = [op.kind for op in conv_program.ops]
    assert kinds.count("conv") == 4
    assert {"mean", "mul", "add", "lut", "maxpool", "avgpool", "concat", "transpose", "dense", "softmax"} <= set(kinds)
    luts = {op.params["ops"] for op in conv_program.ops if op.kind == "lut"}
    assert luts == {"HardSigmoid", "HardSwish", "Sigmoid"}
    # no float survives: every parameter is an integer or an integer array
    for op in conv_program.ops:
        for key, value in op.params.items():
            if isinstance(value, np.ndarray):
                assert value.dtype.kind in "iu", (op.node, key, value.dtype)
            elif key != "ops" and key != "parts":
                assert isinstance(value, (int, np.integer)) or (isinstance(value, list) and
                                                                all(isinstance(v, (int, np.integer)) for v in value)), (op.node, key)
    depthwise = [op for op in conv_program.ops if op.kind == "conv" and op.params["G"] > 1]
    assert len(depthwise) == 1 and depthwise[0].params["G"] == depthwise[0].params["C"] == 8


def test_lookup_table_is_onnxruntime_on_every_int8_value(conv_program):
    op = next(op for op in conv_program.ops if op.kind == "lut" and op.params["ops"] == "Sigmoid")
    x = conv_program.tensors[op.inputs[0]]
    y = conv_program.tensors[op.outputs[0]]
    real = 1 / (1 + np.exp(-(np.arange(-128, 128) - x.zero_point) * x.scale))
    want = np.clip(np.rint(real / y.scale) + y.zero_point, -128, 127)
    assert np.abs(op.params["table"].astype(int) - want).max() <= 1


def test_two_inputs_and_outputs_and_activation_matmul():
    f = mlp()
    program = lower(quantize(f, calibration(f)))
    assert len(program.inputs) == 2 and len(program.outputs) == 2
    assert "matmul" in [op.kind for op in program.ops]
    assert {op.params["ops"] for op in program.ops if op.kind == "lut"} == {"Gelu", "Tanh"}


def test_float_model_is_rejected_with_the_fix():
    f = conv_net()
    assert unsupported_nodes(f)
    with pytest.raises(BackendError, match="not quantized") as info:
        lower(f)
    assert "target='cortex-m4'" in str(info.value)  # what to do


def test_unsupported_op_names_the_node():
    f = mlp()
    q = quantize(f, calibration(f))
    # a LogSoftmax between the quantized ops has no integer kernel
    proto = q.to_proto()
    node = next(n for n in proto.graph.node if n.op_type == "Softmax")
    node.op_type = "LogSoftmax"
    bad = Model.from_proto(proto)
    problems = unsupported_nodes(bad)
    assert any(op == "LogSoftmax" for _, op, _ in problems)
    with pytest.raises(BackendError, match="LogSoftmax"):
        lower(bad)


def test_dynamic_shape_is_an_error():
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])])
    model = Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(BackendError, match="static shape"):
        lower(model)


def test_op_left_in_float_is_reported_once_as_the_cause():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("LpNormalization", ["c1"], ["n1"], axis=1, name="lpnorm"),
         helper.make_node("Conv", ["n1", "w"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         helper.make_node("Relu", ["c2"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.reshape(-1))])
    f = Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    problems = unsupported_nodes(quantize(f, calibration(f)))
    assert [(name, op) for name, op, _ in problems] == [("lpnorm", "LpNormalization")], problems
    assert "no integer kernel for LpNormalization" in problems[0][2]
