"""Untuned TVM CPU kernels: NHWC layout, packed conv weights, register-tiled schedules, fast math.

Every compiled graph is checked against onnxruntime; the structure tests check what makes the
kernels fast (and fast to build): convolutions in NHWC with no transposes between them, no
bounds checks in a convolution's inner loop, no vector wider than two registers (dlight's
GEMV rule made 128-lane ones that took LLVM minutes to compile).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm_graphs import assert_close, make_model, reference

import presso
from presso.backends import compile, get_target

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install 'presso[tvm]')")

from presso.backends.tvm import build as tvm_build  # noqa: E402
from presso.backends.tvm import layout, lower  # noqa: E402


def _w(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _conv_branches(rng, cin, size, inits):
    """Nodes and output value infos of conv branches: each reads `x` and writes `y_<name>`."""
    branches = {
        # (cout, kernel, strides, pads, dilations, group, activation)
        "c24_3x3": (24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "Relu"),      # 3 vectors per tile row
        "c16_s2_asym": (16, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1, "HardSigmoid"),
        "c8_dil2": (8, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, None),
        "c12_1x1": (12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, "Sigmoid"),   # 4 lanes
        "c6_1x1": (6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, None),          # 2 lanes, weights not packed
        "c8_1x5": (8, (1, 5), (1, 1), (0, 2, 0, 2), (1, 1), 1, "Tanh"),
        "dw_5x5_s2": (cin, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), cin, "Relu"),  # depthwise
        "grouped": (8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, None),
    }
    nodes, outputs = [], []
    for name, (cout, kernel, strides, pads, dilations, group, act) in branches.items():
        inits += [numpy_helper.from_array(_w(rng, cout, cin // group, *kernel), f"w_{name}"),
                  numpy_helper.from_array(_w(rng, cout), f"b_{name}")]
        conv_out = f"c_{name}" if act else f"y_{name}"
        nodes.append(helper.make_node("Conv", ["x", f"w_{name}", f"b_{name}"], [conv_out], name=f"conv_{name}",
                                      strides=list(strides), pads=list(pads), dilations=list(dilations),
                                      group=group, kernel_shape=list(kernel)))
        if act:
            nodes.append(helper.make_node(act, [conv_out], [f"y_{name}"], name=f"act_{name}"))
        out_size = [(n + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                    for i, n in enumerate(size)]
        outputs.append(helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [1, cout, *out_size]))
    return nodes, outputs


def test_conv_variants_match_onnxruntime(tmp_path):
    rng = np.random.default_rng(0)
    cin, size = 8, (11, 14)
    inits = []
    nodes, outputs = _conv_branches(rng, cin, size, inits)
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *size])], outputs,
                       inits)
    x = rng.standard_normal((1, cin, *size)).astype(np.float32)
    got = compile(model, "cpu-x86", "tvm", output=tmp_path / "a").run({"x": x})
    for name, want in zip([o.name for o in outputs], reference(model, {"x": x})):
        assert got[name].shape == want.shape, name
        assert_close(got[name], want)


def test_conv_transpose_matches_onnxruntime(tmp_path):
    """After a conv: kernel == stride stays NHWC (1x1 conv + depth-to-space, no transposes);
    kernel 3, stride 2 goes back to NCHW, TOPI's only layout for it."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "w0"),
             numpy_helper.from_array(_w(rng, 8, 3, 2, 2), "w2"), numpy_helper.from_array(_w(rng, 3), "b2"),
             numpy_helper.from_array(_w(rng, 8, 4, 3, 3), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "w2", "b2"], ["t2"], name="up2", strides=[2, 2]),
             helper.make_node("Sigmoid", ["t2"], ["y2"], name="sig"),
             helper.make_node("ConvTranspose", ["c", "w3"], ["y3"], name="up3", strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 7])],
                       [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 3, 12, 14]),
                        helper.make_tensor_value_info("y3", TensorProto.FLOAT, [1, 4, 12, 14])], inits)
    mod = layout.to_nhwc(_relax(model))
    assert _count_ops(mod, "nn.conv2d_transpose") == 1  # the 3x3 one
    assert _count_ops(mod, "permute_dims") == 4  # x in; y2 out; into the NCHW 3x3 one; the shuffle
    x = rng.standard_normal((1, 8, 6, 7)).astype(np.float32)
    got = compile(model, "cpu-x86", "tvm", output=tmp_path / "a").run({"x": x})
    want = reference(model, {"x": x})
    assert_close(got["y2"], want[0])
    assert_close(got["y3"], want[1])


def _se_model(rng, channels=16, size=(8, 8)):
    """PP-LCNet's pieces: conv → Clip → learnable affine → depthwise → SE (pool, 1x1s, HardSigmoid,
    Mul) → Max of two branches (the frontend's stack) → conv; every op can stay NHWC."""
    c, q = channels, channels // 4
    inits = [numpy_helper.from_array(_w(rng, c, 3, 3, 3), "w0"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(np.array([1.25], np.float32), "scale"),  # shape (1,): learnable affine
             numpy_helper.from_array(np.array([-0.1], np.float32), "shift"),
             numpy_helper.from_array(_w(rng, c, 1, 3, 3), "wd"),
             numpy_helper.from_array(_w(rng, q, c, 1, 1), "w_se1"), numpy_helper.from_array(_w(rng, q), "b_se1"),
             numpy_helper.from_array(_w(rng, c, q, 1, 1), "w_se2"), numpy_helper.from_array(_w(rng, c), "b_se2"),
             numpy_helper.from_array(_w(rng, c, c, 1, 1), "w_out")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="relu6"),
             helper.make_node("Mul", ["r0", "scale"], ["a0"], name="affine_mul"),
             helper.make_node("Add", ["a0", "shift"], ["a1"], name="affine_add"),
             helper.make_node("Conv", ["a1", "wd"], ["d0"], name="dw", pads=[1, 1, 1, 1], group=c),
             helper.make_node("GlobalAveragePool", ["d0"], ["p"], name="pool"),
             helper.make_node("Conv", ["p", "w_se1", "b_se1"], ["s1"], name="se1"),
             helper.make_node("Relu", ["s1"], ["s2"], name="se_relu"),
             helper.make_node("Conv", ["s2", "w_se2", "b_se2"], ["s3"], name="se2"),
             helper.make_node("HardSigmoid", ["s3"], ["s4"], name="se_gate"),
             helper.make_node("Mul", ["d0", "s4"], ["e"], name="se_mul"),
             helper.make_node("Max", ["e", "a1"], ["m"], name="max"),
             helper.make_node("Conv", ["m", "w_out"], ["y"], name="conv_out")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *size])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, *size])], inits)


def _relax(model):
    target = get_target("cpu-x86")
    return lower.to_relax(lower.prepare(model, target))


def _count_ops(mod, name):
    return mod["main"].script().count(f"R.{name}(")


def test_layout_converts_the_whole_graph_to_nhwc(tmp_path):
    rng = np.random.default_rng(2)
    model = _se_model(rng)
    mod = layout.to_nhwc(_relax(model))
    # One transpose in (NCHW input), one out; every conv packed or NHWC depthwise.
    assert _count_ops(mod, "permute_dims") == 2
    assert "data_layout=\"NCHW\"" not in mod["main"].script()
    assert _count_ops(mod, "call_tir") >= 3  # conv0, se1/se2 (GEMVs) and conv_out are packed
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = compile(model, "cpu-x86", "tvm", output=tmp_path / "a").run({"x": x})["y"]
    assert_close(got, reference(model, {"x": x})[0])


def _qdq_model(rng, channels=16, size=(8, 8)):
    """Activations fake-quantized (Q → DQ, per tensor) around two convs with int8 weights."""
    c = channels
    inits = [numpy_helper.from_array(np.float32(s), n) for s, n in ((0.05, "s_x"), (0.04, "s_a"), (0.03, "s_y"))]
    inits += [numpy_helper.from_array(np.uint8(z), n) for z, n in ((128, "z_x"), (3, "z_a"), (120, "z_y"))]
    nodes, x = [], "x"
    for i, cin in enumerate((3, c)):
        inits += [numpy_helper.from_array(rng.integers(-60, 60, (c, cin, 3, 3)).astype(np.int8), f"w{i}"),
                  numpy_helper.from_array(rng.uniform(0.002, 0.01, c).astype(np.float32), f"ws{i}"),
                  numpy_helper.from_array(np.zeros(c, np.int8), f"wz{i}")]
        q = ("s_x", "z_x") if i == 0 else ("s_a", "z_a")
        nodes += [helper.make_node("QuantizeLinear", [x, *q], [f"q{i}"], name=f"q{i}"),
                  helper.make_node("DequantizeLinear", [f"q{i}", *q], [f"d{i}"], name=f"dq{i}"),
                  helper.make_node("DequantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"wd{i}"], name=f"wdq{i}", axis=0),
                  helper.make_node("Conv", [f"d{i}", f"wd{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes += [helper.make_node("QuantizeLinear", [x, "s_y", "z_y"], ["qy"], name="qy"),
              helper.make_node("DequantizeLinear", ["qy", "s_y", "z_y"], ["y"], name="dqy")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *size])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, *size])], inits, opset=13)


def test_fake_quantized_activations_stay_nhwc_and_match(tmp_path):
    """Per-tensor Q/DQ pairs become the element-wise ops of TVM's own legalization (so NHWC
    flows through them): results within one output quantization step of onnxruntime."""
    rng = np.random.default_rng(4)
    model = _qdq_model(rng)
    mod = layout.to_nhwc(_relax(model))
    assert _count_ops(mod, "permute_dims") == 2
    assert _count_ops(mod, "quantize") == 0 and _count_ops(mod, "dequantize") == 0
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = compile(model, "cpu-x86", "tvm", output=tmp_path / "a").run({"x": x})["y"]
    want = reference(model, {"x": x})[0]
    assert float(np.abs(got - want).max()) <= 0.03 + 1e-6  # one step of y's scale
    assert float(np.mean(got != want)) < 0.01


def _walk(node, visit):
    """Pre-order walk over TIR statements (tvm 0.27 exposes no stmt_functor in Python)."""
    visit(node)
    for field in ("body", "then_case", "else_case", "block", "init"):
        child = getattr(node, field, None)
        if child is not None and not isinstance(child, (int, float, str)):
            _walk(child, visit)
    if isinstance(node, tvm.tirx.SeqStmt):
        for child in node.seq:
            _walk(child, visit)


def test_untuned_schedules_are_register_tiled_and_narrow():
    model = _se_model(np.random.default_rng(3), channels=32, size=(12, 16))
    target = tvm_build.tvm_target(get_target("cpu-x86"))
    with tvm.transform.PassContext(opt_level=3):
        scheduled = tvm_build.schedule(tvm_build.fuse(_relax(model), target), target)
    kernels = {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert any(name.startswith("fused_conv2d_nhwc_packed") for name in kernels)
    for name, func in kernels.items():
        assert func.attrs and func.attrs.get("tirx.is_scheduled", False), f"{name} has no schedule"
        loops = []
        _walk(func.body, lambda node: loops.append(node) if isinstance(node, tvm.tirx.For) else None)
        vectorized = [int(lp.extent) for lp in loops if lp.kind == tvm.tirx.ForKind.VECTORIZED]
        assert all(extent <= 16 for extent in vectorized), f"{name}: vector loops {vectorized}"
        if "conv2d" in name:
            assert vectorized, f"{name} is not vectorized"
            assert 'scope="local"' in func.script(), f"{name} has no register tile (CPUFallback gave up)"
            # The reduction's inner loops read the padded copy: no bounds check per FMA.
            script = func.script()
            update = script[script.index("_update\"):"):]
            update = update[:update.index("T.writes")]
            assert "if_then_else" not in update, name


@pytest.mark.parametrize("op,low,high", [("Tanh", -12, 12), ("Sigmoid", -30, 30)])
def test_fast_math_matches_onnxruntime(tmp_path, op, low, high):
    n = 4096
    model = make_model([helper.make_node(op, ["x"], ["y"], name="f")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])])
    x = np.linspace(low, high, n, dtype=np.float32)[None]
    got = compile(model, "cpu-x86", "tvm", output=tmp_path / "a").run({"x": x})["y"]
    exact = np.tanh(x.astype(np.float64)) if op == "Tanh" else 1 / (1 + np.exp(-x.astype(np.float64)))
    assert float(np.abs(got - exact).max()) <= 5e-7
    assert float(np.abs(got - reference(model, {"x": x})[0]).max()) <= 5e-7


@pytest.mark.slow  # builds PP-OCR det and cls: about a minute each on 2 cores
@pytest.mark.parametrize("name", ["det", "cls"])
def test_ppocr_models_match_onnxruntime(tmp_path, name):
    zoo = pytest.importorskip("presso.tools.zoo")
    try:
        path = zoo.ppocr_det_model() if name == "det" else zoo.ppocr_cls_model()
        x = zoo.ppocr_det_inputs(1, size=320)[:1] if name == "det" else zoo.ppocr_cls_inputs(1)[0][:1]
    except presso.PressoError as exc:
        pytest.skip(str(exc))
    shapes = {"x": list(x.shape)}
    artifact = compile(presso.load(path), "cpu-x86", "tvm", shapes=shapes, output=tmp_path / name)
    fixed = presso.load(path)
    presso.ir.fix_input_shapes(fixed, shapes)
    got = list(artifact.run({"x": x}).values())[0]
    assert_close(got, reference(fixed, {"x": x})[0], rtol=1e-4)
