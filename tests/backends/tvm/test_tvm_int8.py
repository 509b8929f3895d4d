"""TVM backend, int8: quantized Conv/MatMul run on integers (``int8="arith"``) and match
onnxruntime on the same QDQ model within one output quantization step; QOperator ops compile;
the manifest records the shapes the library really returns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm_graphs import make_model, reference

import presso
from presso.backends import compile, get_target
from presso.ir.errors import BackendError

pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install 'presso[tvm]')")

from presso.backends.tvm import int8 as tvm_int8  # noqa: E402
from presso.backends.tvm import lower  # noqa: E402

Y_SCALE = 0.05
AVX2 = "conv_u8s8_avx2"  # the hand-written vpmaddubsw kernel (channels multiples of 4 in, 8 out)


def _init(name, values):
    return numpy_helper.from_array(np.asarray(values), name)


def _quantized_input(nodes, inits, x_dtype, x_zero, x_scale=0.02):
    """x (float) → Q → DQ: the activation the quantized op reads."""
    inits += [_init("xs", np.float32(x_scale)), _init("xz", np.array(x_zero, x_dtype))]
    nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="x_q"),
              helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="x_dq")]
    return "xd"


def _quantized_output(nodes, inits, tensor, y_zero=100):
    inits += [_init("ys", np.float32(Y_SCALE)), _init("yz", np.uint8(y_zero))]
    nodes += [helper.make_node("QuantizeLinear", [tensor, "ys", "yz"], ["yq"], name="y_q"),
              helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="y_dq")]


def qdq_conv(*, cin=3, cout=8, size=(10, 13), kernel=3, stride=1, pad=1, group=1, x_dtype=np.uint8, x_zero=128,
             per_channel=True, w_zero=0, seed=0) -> presso.Model:
    """Q/DQ(x) → Conv(DQ(int8 W), DQ(int32 bias)) → Relu → Q/DQ: what fold-qdq makes.

    7-bit weights, as the cpu-x86 scheme makes them: with 8-bit ones onnxruntime's u8·s8
    kernels saturate 16-bit sums on CPUs without AVX-VNNI and stop being a reference."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-63, 64, (cout, cin // group, kernel, kernel)).astype(np.int8)
    w_scale = rng.uniform(0.002, 0.01, cout if per_channel else 1).astype(np.float32)
    if not per_channel:
        w_scale = w_scale.reshape(())
    bias = rng.integers(-2000, 2000, cout).astype(np.int32)
    nodes, inits = [], []
    x = _quantized_input(nodes, inits, x_dtype, x_zero)
    w_zero_values = np.full(w_scale.shape, w_zero, np.int8)
    inits += [_init("w", w), _init("ws", w_scale), _init("wz", w_zero_values),
              _init("b", bias), _init("bs", (w_scale * np.float32(0.02)).astype(np.float32).reshape(-1)),
              _init("bz", np.zeros(np.size(w_scale), np.int32))]
    axis = {"axis": 0} if per_channel else {}
    nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w_dq", **axis),
              helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], name="b_dq", axis=0),
              helper.make_node("Conv", [x, "wd", "bd"], ["c"], name="conv", pads=[pad] * 4, strides=[stride] * 2,
                               group=group, kernel_shape=[kernel, kernel]),
              helper.make_node("Relu", ["c"], ["r"], name="relu")]
    _quantized_output(nodes, inits, "r", y_zero=0)
    out = [(s + 2 * pad - kernel) // stride + 1 for s in size]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *size])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, *out])], inits)


def qdq_matmul(*, gemm=False, x_zero=120, seed=0, rows=(2, 5), k=24, w_max=63) -> presso.Model:
    """Q/DQ(x [*rows, k]) → MatMul(DQ(int8 W [k, 16] per column)) + bias → Q/DQ; or a Gemm
    (x [5, k], transB, W stored [16, k] per row)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-w_max, w_max + 1, (16, k) if gemm else (k, 16)).astype(np.int8)
    w_scale = rng.uniform(0.002, 0.01, 16).astype(np.float32)
    nodes, inits = [], []
    x = _quantized_input(nodes, inits, np.uint8, x_zero)
    inits += [_init("w", w), _init("ws", w_scale), _init("wz", np.zeros(16, np.int8)),
              _init("b", rng.standard_normal(16).astype(np.float32))]
    nodes.append(helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w_dq", axis=0 if gemm else 1))
    if gemm:
        nodes.append(helper.make_node("Gemm", [x, "wd", "b"], ["m"], name="gemm", transB=1))
    else:
        nodes += [helper.make_node("MatMul", [x, "wd"], ["mm"], name="matmul"),
                  helper.make_node("Add", ["mm", "b"], ["m"], name="bias")]
    _quantized_output(nodes, inits, "m")
    shape = [5, k] if gemm else [*rows, k]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], 16])], inits)


def _feeds(model, seed=1, scale=1.0):
    shape = model.inputs[0].shape
    return {"x": (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)}


def _assert_within_one_step(got, want, step=Y_SCALE):
    """|TVM − onnxruntime| ≤ one quantization step, and almost every value identical."""
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max() <= step * (1 + 1e-5), f"max error {diff.max() / step:.2f} steps"
    assert np.mean(diff > 1e-7) <= 0.02


def _integer_ops(mod) -> list[tuple[str, list[str], str]]:
    """(kernel, operand dtypes, result dtype) of every conv2d/matmul in the Relax ``main``,
    including the hand-written AVX2 kernels (call_tir)."""
    from tvm import relax

    found = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
                continue
            out = str(binding.var.ty.dtype)
            if call.op.name in ("relax.nn.conv2d", "relax.matmul"):
                found.append((call.op.name, [str(a.ty.dtype) for a in call.args], out))
            elif call.op.name == "relax.call_tir" and call.args[0].name_hint.startswith("conv_u8s8_avx2"):
                found.append((call.args[0].name_hint, [str(a.ty.dtype) for a in call.args[1].fields], out))
    return found


def _relax(model, int8, report=None):
    """The Relax module the backend imports for cpu-x86 (before layout, fusion, scheduling)."""
    prepared = lower.prepare(model, get_target("cpu-x86"), int8=int8)
    return lower.to_relax(prepared, int8=int8, int8_report=report, avx2=True)


def _avx2_kernels(model) -> list[tuple[str, list[str], str]]:
    """The AVX2 kernel calls after build.fuse's layout step (NHWC) and kernel selection."""
    from presso.backends.tvm.layout import to_nhwc

    return [op for op in _integer_ops(tvm_int8.use_avx2_kernels(to_nhwc(_relax(model, "arith"))))
            if op[0].startswith(AVX2)]


@pytest.mark.parametrize("case,kernel", [
    # Relax conv2d(out_dtype=int32) on Presso's generic schedules: channels the AVX2 kernel does
    # not take, depthwise, int8 activations. A padded conv reads x − z_x (int16) so that its
    # zero padding is real 0.0; an unpadded one reads x_q and corrects by z_x·ΣW.
    (dict(), "relax.nn.conv2d"),                                        # 3 input channels
    (dict(kernel=3, stride=2, cout=12, size=(16, 16)), "relax.nn.conv2d"),
    (dict(kernel=1, pad=0, cin=8, cout=7, size=(9, 24)), "relax.nn.conv2d"),
    (dict(cin=8, cout=8, group=8, size=(12, 12)), "relax.nn.conv2d"),   # depthwise
    (dict(cin=8, cout=16, group=2, x_dtype=np.int8, x_zero=-5), "relax.nn.conv2d"),  # grouped
    (dict(x_zero=0, per_channel=False), "relax.nn.conv2d"),
    (dict(kernel=3, pad=0, x_zero=77), "relax.nn.conv2d"),
    # the AVX2 kernel: NHWC inside, padding with the zero point, stride, pointwise, 5×5, tails
    (dict(cin=8, cout=16), AVX2),
    (dict(cin=12, cout=8, kernel=3, stride=2, size=(15, 16)), AVX2),
    (dict(cin=16, cout=24, kernel=1, pad=0, size=(9, 23), x_zero=0), AVX2),
    (dict(cin=4, cout=8, kernel=5, pad=2, size=(7, 9), per_channel=False), AVX2),
    (dict(cin=8, cout=16, x_dtype=np.int8, x_zero=-7), AVX2),          # int8 x: read as x + 128
])
def test_qdq_conv_runs_on_integers_and_matches_onnxruntime(tmp_path, case, kernel):
    model = qdq_conv(**case)
    report = tvm_int8.Int8Report()
    ops = _integer_ops(_relax(model, "arith", report))
    assert report.conv2d == 1 and not report.kept_float and report.avx2_kernels == (kernel == AVX2)
    # the imported module: an int32-accumulating conv2d on 8-bit operands (x − z_x as int16
    # when the conv pads, so that its zero padding is real 0.0)
    shifted = case.get("pad", 1) and case.get("x_zero", 128)
    assert ops == [("relax.nn.conv2d", ["int16" if shifted else np.dtype(case.get("x_dtype", np.uint8)).name,
                                        "int8"], "int32")]
    # after the layout rewrite, the AVX2 kernel takes the convs it can (uint8 operand: x + 128 for int8 x)
    avx2 = [(name[:len(AVX2)], operands, out) for name, operands, out in _avx2_kernels(model)]
    assert avx2 == ([(AVX2, ["uint8", "int8"], "int32")] if kernel == AVX2 else [])

    feeds = _feeds(model, scale=1.5)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="arith")
    assert artifact.manifest["int8"] == {"mode": "arith", "conv2d": 1, "matmul": 0,
                                         "avx2_kernels": int(kernel == AVX2), "kept_float": {}}
    _assert_within_one_step(artifact.run(feeds)["y"], reference(model, feeds)[0])


@pytest.mark.parametrize("gemm", [False, True])
def test_qdq_matmul_and_gemm_run_on_integers(tmp_path, gemm):
    model = qdq_matmul(gemm=gemm)
    ops = _integer_ops(_relax(model, "arith"))
    assert ops == [("relax.matmul", ["uint8", "int8"], "int32")]
    feeds = _feeds(model, scale=2.0)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="arith")
    assert artifact.manifest["int8"]["matmul"] == 1
    _assert_within_one_step(artifact.run(feeds)["y"], reference(model, feeds)[0])


@pytest.mark.parametrize("rows,k", [((1, 42), 22), ((64,), 32)])
def test_matmul_on_the_avx2_kernel(tmp_path, rows, k):
    """Enough rows for the vpmaddubsw GEMM; 42 rows leave a tail, K = 22 is padded to 24."""
    model = qdq_matmul(rows=rows, k=k)
    report = tvm_int8.Int8Report()
    ops = _integer_ops(_relax(model, "arith", report))
    assert report.matmul == 1 and report.avx2_kernels == 1
    assert ops == [("relax.matmul", ["uint8", "int8"], "int32")]
    assert [(name[:len(AVX2)], operands, out) for name, operands, out in _avx2_kernels(model)] == [
        (AVX2, ["uint8", "int8"], "int32")]
    feeds = _feeds(model, scale=2.0)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="arith")
    assert artifact.manifest["int8"]["avx2_kernels"] == 1
    _assert_within_one_step(artifact.run(feeds)["y"], reference(model, feeds)[0])


def test_several_avx2_kernels_in_one_model(tmp_path):
    """Two quantized matmuls of different shapes, then one of the first shape again."""
    rng = np.random.default_rng(6)
    nodes, inits = [], []
    x = _quantized_input(nodes, inits, np.uint8, 130)
    for i, (k, n) in enumerate([(24, 16), (16, 32), (32, 16)]):
        inits += [_init(f"w{i}", rng.integers(-63, 64, (k, n)).astype(np.int8)),
                  _init(f"ws{i}", rng.uniform(0.01, 0.03, n).astype(np.float32)), _init(f"wz{i}", np.zeros(n, np.int8)),
                  _init(f"s{i}", np.float32(0.05)), _init(f"z{i}", np.uint8(128))]
        nodes += [helper.make_node("DequantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"wd{i}"], axis=1),
                  helper.make_node("MatMul", [x, f"wd{i}"], [f"m{i}"]),
                  helper.make_node("QuantizeLinear", [f"m{i}", f"s{i}", f"z{i}"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}", f"z{i}"], [f"d{i}"])]
        x = f"d{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [40, 24])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [40, 16])], inits)
    feeds = _feeds(model, scale=2.0)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="arith")
    assert artifact.manifest["int8"]["avx2_kernels"] == 3
    _assert_within_one_step(artifact.run(feeds)["y"], reference(model, feeds)[0])


def test_weights_that_would_saturate_take_the_generic_path(tmp_path):
    """8-bit weights: vpmaddubsw's int16 pair sums could saturate, so the exact int32 matmul."""
    import onnxruntime as ort

    model = qdq_matmul(rows=(64,), k=32, w_max=127, seed=2)
    report = tvm_int8.Int8Report()
    assert _integer_ops(_relax(model, "arith", report)) == [("relax.matmul", ["uint8", "int8"], "int32")]
    assert report.matmul == 1 and report.avx2_kernels == 0
    feeds = _feeds(model, scale=2.0)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="arith")
    # onnxruntime's own u8·s8 kernels saturate here too (no AVX-VNNI): compare with its literal QDQ
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    literal = ort.InferenceSession(model.to_proto().SerializeToString(), options, providers=["CPUExecutionProvider"])
    _assert_within_one_step(artifact.run(feeds)["y"], literal.run(None, feeds)[0])


def test_float_mode_keeps_the_frontends_float_math(tmp_path):
    model = qdq_conv()
    assert [op[1:] for op in _integer_ops(_relax(model, "float"))] == [(["float32", "float32"], "float32")]
    feeds = _feeds(model)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="float")
    assert artifact.manifest["int8"]["mode"] == "float" and artifact.manifest["int8"]["conv2d"] == 0
    _assert_within_one_step(artifact.run(feeds)["y"], reference(model, feeds)[0])


def test_default_mode_and_float_models():
    # arith where it was measured faster (cpu-x86, with the vpmaddubsw kernel), else float
    assert tvm_int8.default_mode("cpu-x86") == "arith"
    assert tvm_int8.default_mode("cuda") == tvm_int8.default_mode("cpu-arm64") == "float"
    # a float model has nothing to rewrite: the same module either way
    from tvm_graphs import conv_model

    float_model = conv_model()
    assert _integer_ops(_relax(float_model, "arith")) == _integer_ops(_relax(float_model, "float"))


def test_unsupported_quantization_stays_float_and_correct(tmp_path):
    """A weight with a non-zero zero point has no per-channel correction term: kept in float."""
    model = qdq_conv(w_zero=3)
    report = tvm_int8.Int8Report()
    ops = _integer_ops(_relax(model, "arith", report))
    assert report.conv2d == 0 and report.kept_float == {"weight zero point not 0": 1}
    assert ops[0][2] == "float32"
    feeds = _feeds(model)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="arith")
    _assert_within_one_step(artifact.run(feeds)["y"], reference(model, feeds)[0])


def test_bad_int8_mode_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="unknown int8 mode 'fast'.*"):
        compile(qdq_conv(), "cpu-x86", "tvm", output=tmp_path / "a", int8="fast")


# ---- QOperator inputs ----------------------------------------------------------------------

def _qlinear_conv_model(op: str) -> presso.Model:
    rng = np.random.default_rng(3)
    w = rng.integers(-63, 64, (6, 4, 3, 3)).astype(np.int8)
    inits = [_init("w", w), _init("xz", np.uint8(110))]
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 9, 11])
    if op == "QLinearConv":
        inits += [_init("xs", np.float32(0.03)), _init("ws", rng.uniform(0.002, 0.01, 6).astype(np.float32)),
                  _init("wz", np.zeros(6, np.int8)), _init("ys", np.float32(0.08)), _init("yz", np.uint8(128)),
                  _init("b", rng.integers(-500, 500, 6).astype(np.int32))]
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                                name="qconv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        out = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 6, 9, 11])
    else:
        inits.append(_init("wz", np.int8(0)))
        node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], name="iconv", pads=[1, 1, 1, 1])
        out = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 6, 9, 11])
    return make_model([node], [x], [out], inits, opset=13)


def _qlinear_matmul_model() -> presso.Model:
    rng = np.random.default_rng(4)
    inits = [_init("as", np.float32(0.04)), _init("az", np.uint8(90)),
             _init("b", rng.integers(-63, 64, (12, 10)).astype(np.int8)),
             _init("bs", np.float32(0.006)), _init("bz", np.int8(0)), _init("ys", np.float32(0.1)),
             _init("yz", np.uint8(128))]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], name="qmm")
    return make_model([node], [helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 12])],
                      [helper.make_tensor_value_info("y", TensorProto.UINT8, [3, 10])], inits, opset=13)


@pytest.mark.parametrize("op", ["QLinearConv", "ConvInteger", "QLinearMatMul"])
def test_qoperator_ops_compile_on_integers(tmp_path, op):
    model = _qlinear_matmul_model() if op == "QLinearMatMul" else _qlinear_conv_model(op)
    name = model.input_names()[0]
    feeds = {name: np.random.default_rng(5).integers(0, 256, model.inputs[0].shape).astype(np.uint8)}
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", int8="arith")
    assert artifact.manifest["int8"]["conv2d" if "Conv" in op else "matmul"] == 1
    got, want = artifact.run(feeds)["y"], reference(model, feeds)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    if op == "ConvInteger":
        np.testing.assert_array_equal(got, want)  # integers end to end
    else:
        assert np.abs(got.astype(np.int32) - want).max() <= 1 and np.mean(got != want) <= 0.02


# ---- the manifest records what the library returns -------------------------------------------

def test_manifest_output_shapes_are_the_compiled_ones(tmp_path):
    """The ONNX file declares a stale output shape (['n', 3, 4]); the library returns [2, 12]."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["batch", "zero1"], ["b1"], name="unsq"),
             helper.make_node("Concat", ["b1", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
             helper.make_node("Split", ["x"], ["s1", "s2"], name="split", axis=1, num_outputs=2)]
    inits = [_init("zero", np.array(0, np.int64)), _init("zero1", np.array([0], np.int64)),
             _init("minus1", np.array([-1], np.int64))]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4]),
                        helper.make_tensor_value_info("s1", TensorProto.FLOAT, ["n", "h", 4]),
                        helper.make_tensor_value_info("s2", TensorProto.FLOAT, ["n", "h", 4])], inits, opset=18)
    x = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    fixed = compile(model, "cpu-x86", "tvm", output=tmp_path / "a", shapes={"x": [2, 4, 4]})
    outputs = fixed.run({"x": x})
    specs = {s["name"]: s for s in fixed.manifest["outputs"]}
    assert [s["name"] for s in fixed.manifest["outputs"]] == ["y", "s1", "s2"]
    for name, array in outputs.items():
        assert specs[name] == {"name": name, "dtype": "float32", "shape": list(array.shape)}
    assert specs["y"]["shape"] == [2, 16]
    saved = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert saved["outputs"] == fixed.manifest["outputs"]
    # without --shape the batch stays symbolic, and the split's halves are known to be 2 rows
    dynamic = compile(model, "cpu-x86", "tvm", output=tmp_path / "b")
    assert [s["shape"] for s in dynamic.manifest["outputs"]][1:] == [["n", 2, 4], ["n", 2, 4]]


# ---- command line ------------------------------------------------------------------------------

def test_compile_command_int8_flag(tmp_path, capsys):
    from presso.tools.main import main

    path = tmp_path / "q.onnx"
    presso.save(qdq_conv(cin=8, cout=16), path)
    assert main(["compile", str(path), "--backend", "tvm", "-o", str(tmp_path / "a")]) == 0  # cpu-x86: arith
    assert "int8 arith: 1 conv2d and 0 matmul run on int8 operands" in capsys.readouterr().out
    assert main(["compile", str(path), "--backend", "tvm", "--int8", "float", "-o", str(tmp_path / "f")]) == 0
    assert "int8 float: quantized Conv/MatMul run in float" in capsys.readouterr().out
    assert main(["compile", str(path), "--int8", "arith", "-o", str(tmp_path / "b")]) == 1
    assert "--int8 is a tvm option" in capsys.readouterr().err


# ---- real model ----------------------------------------------------------------------------

@pytest.mark.slow
def test_quantized_magika_on_integers_agrees_with_onnxruntime(tmp_path):
    zoo = pytest.importorskip("presso.tools.zoo")
    try:
        path = zoo.magika_model()
        features, _ = zoo.magika_dataset(48, seed=3)
    except presso.PressoError as exc:
        pytest.skip(str(exc))
    model = presso.load(path)
    name = model.input_names()[0]
    presso.ir.fix_input_shapes(model, {name: [1, features.shape[1]]})
    calib = [{name: row[None].astype(np.int32)} for row in features[:16]]
    quantized = presso.quantize(model, calib, target="cpu-x86", progress=False)
    artifact = compile(quantized, "cpu-x86", "tvm", output=tmp_path / "m", int8="arith")
    assert artifact.manifest["int8"]["conv2d"] == 1 and artifact.manifest["int8"]["matmul"] == 2
    agree = []
    for row in features[16:]:
        feeds = {name: row[None].astype(np.int32)}
        got, want = list(artifact.run(feeds).values())[0], reference(quantized, feeds)[0]
        np.testing.assert_allclose(got, want, atol=0.02)  # probabilities after a softmax
        agree.append(got.argmax() == want.argmax())
    assert np.mean(agree) >= 0.95
