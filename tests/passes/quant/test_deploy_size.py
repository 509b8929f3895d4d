"""Size of the deployable int8 model: zero points fold-qdq drops, the compact pass, the byte breakdown.

Every size step must leave the numbers alone: outputs are compared bit for bit with
onnxruntime at every optimization level, and onnxruntime must fuse the same int8 kernels.
"""

import collections

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from quant_graphs import conv_net

import presso
from presso.ir import create_session, evaluate, fix_input_shapes, load
from presso.ir.analysis.size import size_breakdown
from presso.passes import PassManager
from presso.passes.cleanup.compact import Compact
from presso.passes.quant.calibrate import Calibrate
from presso.passes.quant.fold_qdq import FoldQDQ
from presso.passes.quant.insert_qdq import InsertQDQ
from presso.passes.quant.qoperator import lower_to_qoperators
from presso.tools import zoo

LEVELS = ("none", "basic", "all")


def _fake_quant(model=None):
    model = model or conv_net()
    data = {"x": np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)}
    PassManager([InsertQDQ(scheme="u8s8"), Calibrate()]).run(model, data=data, progress=False)
    return model


def _folded(fake, **options):
    model = fake.copy()
    PassManager([FoldQDQ(**options)]).run(model, progress=False)
    return model


def _outputs(proto, level, x):
    return create_session(proto, optimization=level).run(None, {"x": x})


def _assert_bit_exact(a: onnx.ModelProto, b: onnx.ModelProto):
    x = np.random.default_rng(7).standard_normal((4, 3, 16, 16)).astype(np.float32)
    for level in LEVELS:
        for u, v in zip(_outputs(a, level, x), _outputs(b, level, x), strict=True):
            np.testing.assert_array_equal(u, v, err_msg=f"outputs differ at optimization level {level}")


def _fused_ops(proto: onnx.ModelProto, tmp_path) -> collections.Counter:
    """The op histogram of the graph onnxruntime runs after its QDQ fusions (extended level)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node)


def test_fold_drops_all_zero_weight_and_bias_zero_points_exactly(tmp_path):
    fake = _fake_quant()
    kept, dropped = _folded(fake, drop_zero_points=False), _folded(fake)
    constant_dqs = [n for n in dropped.nodes("DequantizeLinear") if isinstance(n.inputs[0], gs.Constant)]
    assert len(constant_dqs) == 6  # 3 weights, 3 int32 biases
    gemm_weight = dropped.node("fc").inputs[1].inputs[0]
    # onnxruntime fuses DQ → Gemm into QGemm only with an explicit weight zero point
    assert [len(n.inputs) for n in constant_dqs if n is not gemm_weight] == [2] * 5 and len(gemm_weight.inputs) == 3
    # activation pairs keep theirs (onnxruntime's Q/DQ pair matching wants all three inputs)
    assert all(len(n.inputs) == 3 for n in dropped.nodes("QuantizeLinear"))
    a, b = kept.to_proto(), dropped.to_proto()
    assert b.ByteSize() < a.ByteSize()
    _assert_bit_exact(a, b)
    fused = _fused_ops(b, tmp_path)
    assert fused == _fused_ops(a, tmp_path) and fused["QLinearConv"] == 2 and fused["QGemm"] == 1
    # nothing the graph already says stays in the metadata
    assert not dropped.annotations.quant


def test_qoperator_lowering_supplies_the_dropped_zero_point():
    fake = _fake_quant()
    dropped = _folded(fake)
    reference = _folded(fake, drop_zero_points=False)
    counts = lower_to_qoperators(dropped)
    assert counts["qlinearconv"] == 2
    zeros = {id(n.inputs[5]) for n in dropped.nodes("QLinearConv")}
    assert len(zeros) == 1  # one shared scalar zero for every per-channel weight
    lower_to_qoperators(reference)
    for model in (dropped, reference):
        model.graph.cleanup().toposort()
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    for level in LEVELS:
        np.testing.assert_array_equal(_outputs(dropped.to_proto(), level, x)[0], _outputs(reference.to_proto(), level, x)[0])
    # and through fold-qdq itself
    lowered = _folded(fake, qoperator=True)
    assert lowered.nodes("QLinearConv")


def test_compact_keeps_the_interface_and_every_output_bit(tmp_path):
    folded = _folded(_fake_quant())
    folded.graph.doc_string = "a long description nobody deploys"
    before = folded.to_proto()
    compact = folded.copy()
    report = PassManager([Compact(bias_scales=True)], verify=True).run(compact, progress=False)
    stats = report.records[0].result.stats
    assert stats["bias_scales"] == 3 and stats["renamed"] > 0
    after = compact.to_proto()
    assert [i.name for i in after.graph.input] == ["x"] and [o.name for o in after.graph.output] == ["y"]
    internal = {t for n in after.graph.node for t in [*n.input, *n.output, n.name]} - {"x", "y", ""}
    assert max(len(t) for t in internal) <= 2
    assert not after.graph.value_info and not after.graph.doc_string
    assert after.ByteSize() < 0.8 * before.ByteSize()
    _assert_bit_exact(before, after)
    assert _fused_ops(after, tmp_path) == _fused_ops(before, tmp_path)  # the bias-scale Mul folds away
    breakdown = size_breakdown(after)
    assert breakdown["duplicates"]["count"] == 0
    # the bias scales are computed, no longer stored: only the weights' per-channel scales remain
    assert breakdown["per_channel_params"] == 8 + 8 + 5
    # saved and loaded, it is a valid model with the same outputs
    presso.save(compact, tmp_path / "c.onnx")
    _assert_bit_exact(before, onnx.load(str(tmp_path / "c.onnx")))


def test_bias_scales_are_computed_only_where_that_is_bit_exact():
    folded = _folded(_fake_quant())
    conv1 = folded.node("conv1")
    bias_scale = conv1.inputs[2].inputs[0].inputs[1]
    bumped = np.nextafter(bias_scale.values, np.float32(np.inf)).astype(np.float32)
    bias_scale.values = bumped  # one ulp off input scale × weight scale
    stats = PassManager([Compact(bias_scales=True)]).run(folded, progress=False).records[0].result.stats
    assert stats["bias_scales"] == 2  # conv2's and fc's, not conv1's
    dq = folded.nodes("Conv")[0].inputs[2].inputs[0]
    assert isinstance(dq.inputs[1], gs.Constant) and np.array_equal(dq.inputs[1].values, bumped)


def test_compact_renames_annotations_and_shrinks_history():
    fake = _fake_quant()
    specs = dict(fake.annotations.quant)
    assert "x" in specs and "c2" not in fake.output_names()
    PassManager([Compact()]).run(fake, progress=False)
    assert fake.annotations.quant["x"] == specs["x"]  # graph inputs keep their names
    assert len(fake.annotations.quant) == len(specs)
    assert all(len(name) <= 2 or name in ("x", "y") for name in fake.annotations.quant)
    insert = next(h for h in fake.annotations.history if h["pass"] == "insert-qdq")
    assert insert["options"] == {"scheme": "u8s8"}  # defaults are implied by the pass version


def _twin_weights(op: str):
    """x → op(x, DQ(w_a)) + op2(x, DQ(w_b)) with byte-identical int8 weights and scales."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(4).integers(-127, 128, (16, 16)).astype(np.int8)
    scale = np.full(16, 0.01, np.float32)
    inits = [numpy_helper.from_array(w, "w_a"), numpy_helper.from_array(w.copy(), "w_b"),
             numpy_helper.from_array(scale, "s_a"), numpy_helper.from_array(scale.copy(), "s_b")]
    nodes = [helper.make_node("DequantizeLinear", ["w_a", "s_a"], ["wa"], axis=1, name="dq_a"),
             helper.make_node("DequantizeLinear", ["w_b", "s_b"], ["wb"], axis=1, name="dq_b"),
             helper.make_node(op, ["x", "wa"], ["ya"], name="op_a"),
             helper.make_node(op, ["x", "wb"], ["yb"], name="op_b"),
             helper.make_node("Add", ["ya", "yb"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "twins", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_compact_keeps_each_annotation_on_its_tensor_when_new_names_collide_with_old_ones():
    from onnx import TensorProto, helper

    from presso.ir import QuantSpec

    nodes = [helper.make_node("Relu", ["x"], ["b"], name="relu"), helper.make_node("Sigmoid", ["b"], ["a"], name="sig"),
             helper.make_node("Neg", ["a"], ["y"], name="neg")]
    graph = helper.make_graph(nodes, "names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    model.annotations.quant.update({"b": QuantSpec("uint8"), "a": QuantSpec("int8"), "gone": QuantSpec("int16")})
    relu_out, sigmoid_out = model.node("relu").outputs[0], model.node("sig").outputs[0]
    PassManager([Compact()]).run(model, progress=False)
    assert {relu_out.name, sigmoid_out.name} == {"a", "b"}  # the names swapped places
    assert model.annotations.quant[relu_out.name].dtype == "uint8"
    assert model.annotations.quant[sigmoid_out.name].dtype == "int8"
    assert "gone" not in model.annotations.quant


@pytest.mark.parametrize("op, merged", [("Mul", 3), ("MatMul", 0), ("Gemm", 0)])
def test_dedupe_shares_equal_constants_and_dequantizers_where_onnxruntime_allows(op, merged):
    # Shared, DQ → MatMul/Gemm would no longer become onnxruntime's MatMulNBits (other numbers)
    proto = _twin_weights(op)
    model = load(proto)
    stats = PassManager([Compact()]).run(model, progress=False).records[0].result.stats
    assert stats["deduplicated"] == merged  # the weight, its scale, then the DequantizeLinear itself
    assert len(model.nodes("DequantizeLinear")) == (1 if merged else 2)
    x = np.random.default_rng(5).standard_normal((16, 16)).astype(np.float32)
    for level in (*LEVELS, "extended"):
        np.testing.assert_array_equal(create_session(model.to_proto(), optimization=level).run(None, {"x": x})[0],
                                      create_session(proto, optimization=level).run(None, {"x": x})[0])
    # renaming never reaches into the proto the model was loaded from
    assert [t.name for t in proto.graph.initializer] == ["w_a", "w_b", "s_a", "s_b"]


def test_size_breakdown_adds_up_to_the_file():
    folded = _folded(_fake_quant(), drop_zero_points=False)
    proto = folded.to_proto()
    breakdown = size_breakdown(proto)
    assert breakdown["total"] == len(proto.SerializeToString())
    assert sum(breakdown["categories"].values()) == breakdown["total"]
    cats = breakdown["categories"]
    # conv weights 8·3·3·3 + 8·8·3·3, Gemm 8·5 as int8; biases 8 + 8 + 5 int32
    assert cats["integer weights"] == 216 + 576 + 40
    assert cats["int32 biases"] == 4 * 21
    # per-channel weight scales (21) and bias scales (21), plus 4-byte activation scales
    assert cats["scales"] >= 4 * 42 and breakdown["per_channel_params"] == 42
    assert cats["names"] > 0 and cats["nodes"] > 0


def test_magika_int8_file_is_at_most_0_27_of_float():
    """Issue 3's size target on magika: int8 weights, scales, int32 biases and a compact graph."""
    features, _ = zoo.magika_dataset(16, seed=0)
    model = load(zoo.magika_model())
    quantized = presso.quantize(model, {"bytes": features}, progress=False, method="minmax", bias_correction=False)
    before = quantized.to_proto()
    PassManager([Compact(bias_scales=True)]).run(quantized, progress=False)
    after = quantized.to_proto()
    ratio = after.ByteSize() / model.to_proto().ByteSize()
    assert ratio <= 0.27, f"int8 magika is {ratio:.3f} × the float file"
    feed = {"bytes": features[:4]}
    for level in LEVELS:
        got, want = evaluate(quantized, feed, optimization=level), evaluate(load(before), feed, optimization=level)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.slow
def test_ppocr_det_int8_file_is_at_most_0_27_of_float():
    """PP-OCRv4 det: per-channel scales, int32 biases and 1,000 Q/DQ nodes leave ~2% for the graph."""
    model = load(zoo.ppocr_det_model())
    fix_input_shapes(model, {"x": [1, 3, 96, 96]})
    PassManager.parse("constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,"
                      "eliminate-dead-code,upgrade-opset{version=13}").run(model)
    float_size = model.to_proto().ByteSize()
    quantized = presso.quantize(model, {"x": zoo.ppocr_det_inputs(2, size=96)}, progress=False, method="minmax",
                                bias_correction=False)
    before = quantized.to_proto()
    PassManager([Compact(bias_scales=True)]).run(quantized, progress=False)
    ratio = quantized.to_proto().ByteSize() / float_size
    assert ratio <= 0.27, f"int8 det is {ratio:.4f} × the float file"
    x = zoo.ppocr_det_inputs(1, size=96, seed=9)
    for level in ("none", "all"):
        got = create_session(quantized.to_proto(), optimization=level).run(None, {"x": x})
        want = create_session(before, optimization=level).run(None, {"x": x})
        for u, v in zip(got, want, strict=True):
            np.testing.assert_array_equal(u, v)
