"""Regression tests for what differential fuzzing (``benchmarks/fuzz.py``) found.

Each is a small hand-built graph reproducing one finding, named after what went wrong; the
docstring gives the fuzzed graph that first showed it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from _graphs import init, make_proto, reference, vi
from onnx import helper

from presso.ir import load
from presso.passes import PassManager


def _quantized_reshape_read_by_if_body() -> onnx.ModelProto:
    """Conv → Reshape, whose output feeds a ReduceSum (→ If condition) and both If branches."""
    rng = np.random.default_rng(0)
    then = helper.make_graph([helper.make_node("Tanh", ["r"], ["t"])], "then", [], [vi("t", [1, 36])])
    other = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [], [vi("e", [1, 36])])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    inits = [init("w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
             init("shape", np.array([1, -1], np.int64)), init("zero", np.array(0.0, np.float32))]
    return make_proto(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", [1, 36])], inits, opset=16)


def _quantized_transpose_expand_read_by_if_body() -> onnx.ModelProto:
    """Conv → Transpose → Expand, whose output feeds a ReduceSum (→ If condition) and both
    branches: onnxruntime walks the DQ through Transpose *and* Expand (fuzzed graph 501080)."""
    rng = np.random.default_rng(0)
    then = helper.make_graph([helper.make_node("Tanh", ["r"], ["t"])], "then", [], [vi("t", [1, 4, 3, 3])])
    other = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [], [vi("e", [1, 4, 3, 3])])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["tc"], perm=[0, 1, 3, 2]),
        helper.make_node("Expand", ["tc", "shape"], ["r"]),
        helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    inits = [init("w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
             init("shape", np.array([1, 4, 3, 3], np.int64)), init("zero", np.array(0.0, np.float32))]
    return make_proto(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", [1, 4, 3, 3])], inits, opset=16)


_LOAD_WITH_BASIC_OPTIMIZATIONS = """
import sys, onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
"""


@pytest.mark.parametrize("build", [_quantized_reshape_read_by_if_body, _quantized_transpose_expand_read_by_if_body])
def test_insert_qdq_writes_no_dq_that_onnxruntime_propagates_into_an_if_body(build, tmp_path):
    """onnxruntime 1.32's QDQPropagationTransformer (basic optimizations and up) aborts the
    process when it moves a DQ through a Reshape whose output an If body also reads. Fuzzed
    graph 1076 (opset 16: Resize → Q/DQ → Reshape → ReduceSum → Greater → If reading the
    Reshape) crashed `fold-qdq`'s load check; insert-qdq now leaves that tensor in float."""
    proto = build()
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 3)).astype(np.float32)
    model = load(proto)
    data = [{"x": np.random.default_rng(i).standard_normal((1, 2, 3, 3)).astype(np.float32)} for i in range(4)]
    PassManager.parse("insert-qdq,calibrate").run(model, data=data, progress=False)
    assert model.nodes("QuantizeLinear"), "the Conv should still be quantized"
    path = tmp_path / "calibrated.onnx"
    onnx.save(model.to_proto(), str(path))
    # in a child process: the bug kills the process instead of raising
    run = subprocess.run([sys.executable, "-c", _LOAD_WITH_BASIC_OPTIMIZATIONS, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    PassManager.parse("fold-qdq").run(model, progress=False)
    folded = model.to_proto()
    onnx.checker.check_model(folded, full_check=True)
    got = reference(folded, {"x": x})["y"]
    want = reference(proto, {"x": x})["y"]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.abs(got - want).max() < 0.2 * np.abs(want).max()  # int8: close, not exact


def test_calibrate_accepts_a_static_batch_above_one():
    """Models whose inputs have a static batch of 2 were refused by `calibrate` (it read the
    data one sample at a time: "input 'x' has size 1 on axis 0, the model expects 2"). Found
    on most fuzzed graphs with a static batch of 2."""
    rng = np.random.default_rng(0)
    proto = make_proto([helper.make_node("Conv", ["x", "w"], ["y"])], [vi("x", [2, 3, 4, 4])],
                       [vi("y", [2, 2, 2, 2])], [init("w", rng.standard_normal((2, 3, 3, 3)).astype(np.float32))])
    data = [{"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)} for _ in range(3)]
    model = load(proto)
    PassManager.parse("insert-qdq,calibrate,fold-qdq").run(model, data=data, progress=False)
    x = data[0]["x"]
    got = reference(model.to_proto(), {"x": x})["y"]
    want = reference(proto, {"x": x})["y"]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def _optimized_session(proto: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_calibrated_global_average_pool_runs_under_onnxruntime_int8_kernels():
    """The mean of Concat(c, −c) over H is ~0 on every sample, so calibration gave the pooled tensor a
    floor scale (1e-10) and onnxruntime's QLinearGlobalAveragePool refused to run the int8
    model ("parameter out of computation range"; it needs s_in / (s_out·H·W) < 256). Fuzzed
    graph 9206 (opset 17: … → Neg → Concat → GlobalAveragePool → MatMul); with calibrate{method=auto}
    the scoring run raised instead."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Neg", ["c"], ["n"]),
        helper.make_node("Concat", ["c", "n"], ["cat"], axis=2),
        helper.make_node("GlobalAveragePool", ["cat"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "g"], ["y"]),
    ]
    inits = [init("w", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             init("g", rng.standard_normal((4, 2)).astype(np.float32))]
    proto = make_proto(nodes, [vi("x", [1, 3, 6, 4])], [vi("y", [1, 2])], inits, opset=17)
    data = [{"x": rng.standard_normal((1, 3, 6, 4)).astype(np.float32)} for _ in range(4)]
    for pipeline in ("insert-qdq,calibrate,fold-qdq", "insert-qdq,calibrate{method=auto},fold-qdq"):
        model = load(proto)
        PassManager.parse(pipeline).run(model, data=data, progress=False)
        quantized = model.to_proto()
        assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
        y = _optimized_session(quantized).run(None, data[0])[0]  # raised before the fix
        want = reference(proto, data[0])["y"]  # ≈ 0: the mean of c and −c
        assert np.abs(want).max() < 1e-5 and np.abs(y).max() < 0.05


def test_an_initializer_that_is_also_a_graph_input_stays_an_input():
    """An overridable default (ONNX IR ≥ 4; old PyTorch exports with keep_initializers_as_inputs)
    stays a graph input, and no pass treats it as a constant. Found while extending the fuzzer."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    proto = make_proto(nodes, [vi("x", [1, 2, 3, 3]), vi("w", [3, 2, 1, 1])], [vi("y", [1, 3, 3, 3])],
                       [init("w", rng.standard_normal((3, 2, 1, 1)).astype(np.float32))], opset=13)
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32),
             "w": rng.standard_normal((3, 2, 1, 1)).astype(np.float32)}  # overrides the default
    model = load(proto)
    PassManager.parse("eliminate-dead-code").run(model, progress=False)
    written = model.to_proto()
    assert [i.name for i in written.graph.input] == ["x", "w"]
    np.testing.assert_allclose(reference(written, feeds)["y"], reference(proto, feeds)["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail", ["maxpool", "reshape-softmax"])
def test_int8_activations_at_opset_21_load_under_onnxruntime_optimizations(tail):
    """At opset 21 with int8 activations (int8-symmetric), a DQ that feeds a MaxPool/Reshape/…
    whose output stays float (graph output, Softmax) made a model onnxruntime will not load with
    its default optimizations: it copies the DQ forward and the Q it adds fails its type check
    ("output_dtype INT8 does not match y_zero_point type UINT8"). Fuzzed graph 10129 (opset 21:
    … → BatchNormalization → BatchNormalization → MaxPool → output)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    if tail == "maxpool":
        nodes.append(helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2]))
        out = vi("y", [1, 4, 4, 4])
    else:
        nodes += [helper.make_node("Reshape", ["c", "flat"], ["r"]),
                  helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
        out = vi("y", [1, 100])
    inits = [init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("flat", np.array([1, -1], np.int64))]
    proto = make_proto(nodes, [vi("x", [1, 3, 5, 5])], [out], inits, opset=21)
    data = [{"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)} for _ in range(4)]
    model = load(proto)
    PassManager.parse("insert-qdq{scheme=int8-symmetric},calibrate,fold-qdq").run(model, data=data, progress=False)
    quantized = model.to_proto()
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    y = _optimized_session(quantized).run(None, data[0])[0]  # failed to load before the fix
    want = reference(proto, data[0])["y"]
    assert y.shape == want.shape and np.abs(y - want).max() < 0.1 * np.abs(want).max() + 0.02


@pytest.mark.parametrize("dilations", [[2, 2], [1, 1]])
def test_dilated_average_pool_stays_float_so_onnxruntime_loads_the_int8_model(dilations):
    """onnxruntime fuses DQ → AveragePool → Q into QLinearAveragePool, which has no
    ``dilations`` (opset 19 added them to AveragePool), and then refuses the whole model
    ("Unrecognized attribute: dilations for operator QLinearAveragePool"). Fuzzed graph 31033
    (opset 19: … → Split → AveragePool{dilations=[1]} → Selu → …): even all-ones dilations."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], dilations=dilations),
             helper.make_node("Conv", ["p", "w2"], ["y"])]
    inits = [init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("w2", rng.standard_normal((2, 4, 1, 1)).astype(np.float32))]
    size = 6 - dilations[0]
    proto = make_proto(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", [1, 2, size, size])], inits, opset=19)
    data = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(4)]
    model = load(proto)
    PassManager.parse("insert-qdq,calibrate,fold-qdq").run(model, data=data, progress=False)
    quantized = model.to_proto()
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) >= 2  # the convs still are
    y = _optimized_session(quantized).run(None, data[0])[0]  # refused to load before the fix
    want = reference(proto, data[0])["y"]
    assert np.abs(y - want).max() < 0.1 * np.abs(want).max()


@pytest.mark.parametrize("mode", ["constant", "wrap"])
def test_quantized_pad_with_axes_runs_under_onnxruntime_optimizations(mode):
    """A Pad with an ``axes`` input (opset ≥ 18) before a Transpose: in the QDQ model
    onnxruntime's transpose optimizer gathers ``pads`` as if it had 2·rank values and the
    model fails at run time ("indices element out of data bounds, idx=4"). insert-qdq now
    writes such pads at full rank. Fuzzed graph 100019 (opset 21: … → Pad{wrap, axes=[1, 2]}
    → Transpose → MatMul → …)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Pad", ["c", "pads", "", "axes"], ["p"], mode=mode),
             helper.make_node("Transpose", ["p"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["t", "m"], ["y"])]
    inits = [init("w", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             init("pads", np.array([1, 1, 0, 1], np.int64)), init("axes", np.array([1, 2], np.int64)),
             init("m", rng.standard_normal((7, 3)).astype(np.float32))]
    proto = make_proto(nodes, [vi("x", [1, 3, 5, 6])], [vi("y", [1, 5, 6, 3])], inits, opset=21)
    data = [{"x": rng.standard_normal((1, 3, 5, 6)).astype(np.float32)} for _ in range(4)]
    model = load(proto)
    PassManager.parse("insert-qdq,calibrate,fold-qdq").run(model, data=data, progress=False)
    quantized = model.to_proto()
    y = _optimized_session(quantized).run(None, data[0])[0]  # failed before the fix
    want = reference(proto, data[0])["y"]
    assert np.abs(y - want).max() < 0.1 * np.abs(want).max()


def test_upgrade_opset_converts_an_op_whose_output_an_if_body_reads():
    """Fuzzed graph 50030 (opset 11: LogSoftmax → … → If whose branches read it): refused on
    about 2 graphs in 1000."""
    then = helper.make_graph([helper.make_node("Relu", ["l"], ["t"])], "then", [], [vi("t", [2, 3, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["l"], ["e"])], "else", [], [vi("e", [2, 3, 4])])
    nodes = [helper.make_node("LogSoftmax", ["x"], ["l"], axis=1),  # not the last axis: the adapter rewrites it
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    proto = make_proto(nodes, [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], [init("cond", np.array(True))], opset=11)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    model = load(proto)
    PassManager.parse("upgrade-opset{version=17}").run(model, progress=False)
    assert model.opset == 17
    np.testing.assert_allclose(reference(model.to_proto(), {"x": x})["y"], reference(proto, {"x": x})["y"], rtol=1e-6)


def test_calibrate_requantizes_a_bias_whose_weight_has_one_scale_for_every_channel():
    """Fuzzed graph 502543 (opset 18): the Conv weight is also added to the activations, so it
    gets one per-tensor scale, while the bias that bias-correction gives the Conv has one scale
    per channel; requantizing that bias for a new input scale failed to reshape."""
    rng = np.random.default_rng(3)
    constant = lambda name: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=onnx.numpy_helper.from_array(rng.standard_normal((2, 1, 3)).astype(np.float32)))
    nodes = [constant("wa"), constant("wb"),
             helper.make_node("Add", ["wa", "wb"], ["w"]),
             helper.make_node("Add", ["w", "x"], ["a"]),
             helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Conv", ["n", "w"], ["c"], kernel_shape=[3], strides=[2], auto_pad="VALID"),
             helper.make_node("LeakyRelu", ["c"], ["l"]),
             helper.make_node("Softmax", ["l"], ["y"], axis=2)]
    stats = [init(name, np.array([value], np.float32)) for name, value in
             (("g", 1.2), ("b", 0.1), ("m", 0.05), ("v", 0.9))]
    proto = make_proto(nodes, [vi("x", [2, 1, 3])], [vi("y", [2, 2, 1])], stats, opset=18)
    data = [{"x": rng.standard_normal((2, 1, 3)).astype(np.float32)} for _ in range(8)]
    model = load(proto)
    PassManager.parse("insert-qdq{scheme=int8-symmetric},calibrate{method=auto},fold-qdq").run(
        model, data=data, progress=False)
    expected = reference(proto, data[0])["y"]
    assert np.max(np.abs(reference(model.to_proto(), data[0])["y"] - expected)) < 0.2
