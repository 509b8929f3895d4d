import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from backend_models import conv_model, qdq_conv_model
from onnx import TensorProto, helper

import presso
from presso.backends import compile, load_artifact
from presso.backends.onnxruntime.int8_form import activation_dtype, candidate_forms, convert_activations
from presso.ir import BackendError, Model, evaluate
from presso.tools import zoo


def _ort(proto_or_path, feeds, optimization=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    source = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_compile_save_load_run_matches_onnxruntime_on_the_original(tmp_path, x_batch):
    proto = conv_model()
    artifact = presso.compile(presso.load(proto), target="cpu-x86", backend="onnxruntime")
    expected = _ort(proto, {"x": x_batch})[0]
    np.testing.assert_allclose(artifact.run({"x": x_batch})["y"], expected, rtol=1e-5, atol=1e-6)

    folder = artifact.save(tmp_path / "build")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["target"] == "cpu-x86"
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3, 8, 8]}]
    assert manifest["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["N", 4]}]
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert manifest["scheme"]["weights"]["dtype"] == "int8"
    assert manifest["files"] == {"model": "model.onnx", "optimized": "model.ort-optimized.onnx"}
    assert manifest["verification"]["max_abs"] < 1e-5
    # both written files load in onnxruntime and compute the same function
    for name in manifest["files"].values():
        np.testing.assert_allclose(_ort(folder / name, {"x": x_batch})[0], expected, rtol=1e-5, atol=1e-6)

    loaded = load_artifact(folder)
    np.testing.assert_allclose(loaded.run({"x": x_batch})["y"], expected, rtol=1e-5, atol=1e-6)
    # a batch size the model never saw: dynamic inputs stay dynamic without --shape
    np.testing.assert_allclose(loaded.run({"x": x_batch[:1]})["y"], expected[:1], rtol=1e-5, atol=1e-6)


def test_constant_weights_become_initializers_and_shapes_can_be_fixed(tmp_path, x_batch):
    model = presso.load(conv_model(weights_as_constants=True))
    artifact = compile(model, "cpu-x86", shapes={"x": [3, 3, 8, 8]})
    assert len(model.nodes("Constant")) == 2  # the caller's model is not modified
    folder = artifact.save(tmp_path / "build")
    written = onnx.load(str(folder / "model.onnx"))
    assert not [n for n in written.graph.node if n.op_type == "Constant"]
    initializers = {i.name for i in written.graph.initializer}
    conv = next(n for n in written.graph.node if n.op_type == "Conv")
    assert conv.input[1] in initializers and conv.input[2] in initializers  # w and b, under compacted names
    assert artifact.manifest["inputs"][0]["shape"] == [3, 3, 8, 8]
    assert artifact.manifest["dynamic_inputs"] == []
    np.testing.assert_allclose(load_artifact(folder).run({"x": x_batch})["y"],
                               _ort(conv_model(), {"x": x_batch})[0], rtol=1e-5, atol=1e-6)


def test_unloadable_model_is_a_backend_error_naming_the_node(tmp_path):
    # An op onnxruntime has no kernel for: the compiled model must never be declared a success.
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], name="mystery", domain="com.example")],
                              "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    with pytest.raises(BackendError, match="mystery"):
        compile(Model.from_proto(proto), "cpu-x86")
    assert not (tmp_path / "build").exists()


def test_per_channel_dq_at_opset_11_is_refused_not_written():
    # The example: quantize_static(per_channel=True) on an opset-11 model.
    proto = qdq_conv_model()
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", 11))
    with pytest.raises(BackendError, match="DequantizeLinear|dq_w"):
        compile(Model.from_proto(proto), "cpu-x86", verify=False)


def test_unknown_target_and_backend_are_errors():
    model = presso.load(conv_model())
    with pytest.raises(BackendError, match="valid targets"):
        compile(model, "cpu-z80")
    with pytest.raises(BackendError, match="valid backends|not served"):
        compile(model, "cpu-x86", backend="llvm-ir")


def test_load_artifact_errors(tmp_path):
    with pytest.raises(BackendError, match="manifest.json is missing"):
        load_artifact(tmp_path)
    artifact = compile(presso.load(conv_model()), "cpu-x86")
    folder = artifact.save(tmp_path / "build")
    (folder / "model.onnx").unlink()
    with pytest.raises(BackendError, match="missing"):
        load_artifact(folder)


def test_run_rejects_wrong_inputs(x_batch):
    artifact = compile(presso.load(conv_model()), "cpu-x86")
    with pytest.raises(presso.CalibrationError, match="missing"):
        artifact.run({"image": x_batch})
    with pytest.raises(presso.CalibrationError, match="rank"):
        artifact.run({"x": x_batch[0]})


# ---- int8 forms --------------------------------------------------------------------------------
@pytest.mark.parametrize("start,target", [("uint8", "int8"), ("int8", "uint8")])
def test_activation_dtype_switch_is_exact(start, target):
    proto = qdq_conv_model(start)
    model = Model.from_proto(proto)
    assert activation_dtype(model) == start
    assert convert_activations(model, target) == 2
    assert activation_dtype(model) == target
    x = np.random.default_rng(0).uniform(-2.5, 2.5, (1, 3, 8, 8)).astype(np.float32)
    # without kernel fusion both forms compute the same dequantized values
    np.testing.assert_array_equal(evaluate(model, {"x": x}, optimization="none")["y"],
                                  _ort(proto, {"x": x}, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)[0])
    # and with onnxruntime's fused int8 kernels they agree to a quantization step
    np.testing.assert_allclose(evaluate(model, {"x": x}, optimization="all")["y"], _ort(proto, {"x": x})[0],
                               atol=0.2 + 1e-6)


def test_compile_of_a_quantized_model_times_the_int8_forms_and_records_them(tmp_path):
    proto = qdq_conv_model("int8")
    assert [c.name for c in candidate_forms(Model.from_proto(proto), ("qdq-u8", "qdq-s8"))] == ["qdq-s8", "qdq-u8"]
    artifact = compile(Model.from_proto(proto), "cpu-x86", form_rounds=3)
    form = artifact.manifest["int8_form"]
    # the model has no Div, so "+divmul" cannot change it and is not a candidate
    assert form["given"] == "qdq-s8" and set(form["candidates"]) == {"qdq-s8", "qdq-u8", "qoperator-u8"}
    assert not form.get("rejected")  # every form computes the same outputs
    assert form["chosen"] in form["candidates"]
    for name in form["candidates"]:
        assert form["latency"][name]["threads=1"]["median_ms"] > 0
    chosen_dtype = {"qdq-u8": "uint8", "qdq-s8": "int8", "qoperator-u8": "uint8"}[form["chosen"]]
    assert activation_dtype(artifact.model) in (chosen_dtype, None)  # QLinearConv hides its quantizers
    assert ("QLinearConv" in {n.op for n in artifact.model.graph.nodes}) == (form["chosen"] == "qoperator-u8")
    x = np.random.default_rng(1).uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32)
    loaded = load_artifact(artifact.save(tmp_path / "q"))
    np.testing.assert_allclose(loaded.run({"x": x})["y"], _ort(proto, {"x": x})[0], atol=0.2 + 1e-6)


def test_no_select_form_keeps_the_given_form():
    artifact = compile(Model.from_proto(qdq_conv_model("int8")), "cpu-x86", select_form=False)
    assert artifact.manifest["int8_form"] is None
    assert activation_dtype(artifact.model) == "int8"


# ---- a real model ---------------------------------------------------------------------------------
def test_ppocr_cls_compiles_and_matches_the_original_on_rendered_text(tmp_path):
    path = zoo.ppocr_cls_model()
    images, _ = zoo.ppocr_cls_inputs(2)
    artifact = compile(presso.load(path), "cpu-x86", shapes={"x": [1, 3, 48, 192]})
    loaded = load_artifact(artifact.save(tmp_path / "cls"))
    written = onnx.load(str(tmp_path / "cls" / "model.onnx"))
    assert not [n for n in written.graph.node if n.op_type == "Constant"]  # weights are initializers
    for image in images:
        expected = _ort(path, {"x": image[None]})[0]
        np.testing.assert_allclose(loaded.run({"x": image[None]})["save_infer_model/scale_0.tmp_1"], expected,
                                   rtol=1e-4, atol=1e-5)


def _qdq_div_model() -> onnx.ModelProto:
    """x → Q/DQ(u8) → Div(6) → Q/DQ(u8) → y: the tail of PP-OCR's hard-swish."""
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s_in"),
             numpy_helper.from_array(np.array(10, np.uint8), "zp_in"),
             numpy_helper.from_array(np.array(0.01, np.float32), "s_out"),
             numpy_helper.from_array(np.array(10, np.uint8), "zp_out"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "zp_in"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "zp_in"], ["xd"], name="dq_in"),
             helper.make_node("Div", ["xd", "six"], ["d"], name="div6"),
             helper.make_node("QuantizeLinear", ["d", "s_out", "zp_out"], ["dq"], name="q_out"),
             helper.make_node("DequantizeLinear", ["dq", "s_out", "zp_out"], ["y"], name="dq_out")]
    graph = helper.make_graph(nodes, "div", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_div_by_constant_becomes_an_int8_mul_that_onnxruntime_fuses(tmp_path):
    from presso.backends.onnxruntime.int8_form import divisions_to_multiplications

    proto = _qdq_div_model()
    model = Model.from_proto(proto)
    assert divisions_to_multiplications(model) == 1
    assert [n.op for n in model.nodes("Div")] == [] and len(model.nodes("Mul")) == 1
    x = np.linspace(-0.5, 12.0, 64, dtype=np.float32)[None]
    expected = _ort(proto, {"x": x}, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)[0]
    got = evaluate(model, {"x": x}, optimization="all")["y"]
    np.testing.assert_allclose(got, expected, atol=0.01 + 1e-6)  # at most one output quantization step
    assert np.mean(got == expected) > 0.9
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.to_proto().SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "QLinearMul" in fused and "Div" not in fused
    # a Div whose divisor is not one repeated constant is left alone
    model = Model.from_proto(_qdq_div_model())
    model.tensor("six").values = np.array([6.0, 3.0] * 32, np.float32).reshape(1, 64)
    assert divisions_to_multiplications(model) == 0


def test_int8_form_selection_only_times_on_a_matching_host():
    artifact = compile(Model.from_proto(qdq_conv_model("int8")), "cpu-arm64", form_rounds=1)
    assert "aarch64" in artifact.manifest["int8_form"]["reason"]
    artifact = compile(Model.from_proto(qdq_conv_model("int8")), "int8-symmetric")
    assert "no int8 forms" in artifact.manifest["int8_form"]["reason"]
    assert activation_dtype(artifact.model) == "int8"  # kept as given


def test_a_float_model_whose_legalization_changed_its_outputs_is_refused(monkeypatch):
    from presso.passes import PassManager

    real_run = PassManager.run

    def faulty_run(self, model, **kwargs):  # a legalization bug: a weight gets scaled
        report = real_run(self, model, **kwargs)
        model.tensor("w").values = model.tensor("w").values * 2
        return report

    monkeypatch.setattr(PassManager, "run", faulty_run)
    with pytest.raises(BackendError, match="different outputs"):
        compile(presso.load(conv_model()), "cpu-x86")


def _qdq_add_model() -> onnx.ModelProto:
    """a, b → Q/DQ(u8) → Add → Q/DQ(u8) → y, with [1]-shaped scales and zero points."""
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array([0.02], np.float32), "s"),
             numpy_helper.from_array(np.array([128], np.uint8), "zp"),
             numpy_helper.from_array(np.array([0.04], np.float32), "s_y"),
             numpy_helper.from_array(np.array([128], np.uint8), "zp_y")]
    nodes = []
    for name in ("a", "b"):
        nodes += [helper.make_node("QuantizeLinear", [name, "s", "zp"], [f"{name}q"], name=f"q_{name}"),
                  helper.make_node("DequantizeLinear", [f"{name}q", "s", "zp"], [f"{name}d"], name=f"dq_{name}")]
    nodes += [helper.make_node("Add", ["ad", "bd"], ["sum"], name="add"),
              helper.make_node("QuantizeLinear", ["sum", "s_y", "zp_y"], ["sq"], name="q_sum"),
              helper.make_node("DequantizeLinear", ["sq", "s_y", "zp_y"], ["y"], name="dq_sum")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 32]) for n in ("a", "b")]
    graph = helper.make_graph(nodes, "add", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _fused_ops(model: Model, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(model.to_proto().SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node]


def test_scalar_qparams_keep_the_numbers_and_let_onnxruntime_fuse(tmp_path):
    from presso.backends.onnxruntime.int8_form import scalar_qparams

    proto = _qdq_add_model()
    model = Model.from_proto(proto)
    assert "QLinearAdd" not in _fused_ops(model, tmp_path)  # why the rewrite exists
    assert scalar_qparams(model) == 4
    assert all(model.tensor(n).values.shape == () for n in ("s_scalar", "zp_scalar", "s_y_scalar", "zp_y_scalar"))
    assert "QLinearAdd" in _fused_ops(model, tmp_path)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.uniform(-2, 2, (1, 32)).astype(np.float32), "b": rng.uniform(-2, 2, (1, 32)).astype(np.float32)}
    none = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(evaluate(model, feeds, optimization="none")["y"], _ort(proto, feeds, none)[0])
    # compile applies it to every quantized model and records it
    artifact = compile(Model.from_proto(proto), "cpu-x86", select_form=False)
    assert artifact.manifest["scalar_qparams"] == 4


def test_compile_writes_a_compact_model_and_loads_it_once(monkeypatch, x_batch):
    from presso.backends.onnxruntime import artifact as artifact_module
    from presso.backends.onnxruntime import int8_form

    opened = []
    for module in (artifact_module, int8_form):
        real = module.create_session
        monkeypatch.setattr(module, "create_session",
                            lambda *a, _real=real, **k: opened.append(k.get("threads")) or _real(*a, **k))
    proto = conv_model()
    artifact = compile(presso.load(proto), "cpu-x86")
    assert len(opened) == 1  # load check, verification and the artifact's runs share one session
    np.testing.assert_allclose(artifact.run({"x": x_batch})["y"], _ort(proto, {"x": x_batch})[0], rtol=1e-5, atol=1e-6)
    assert len(opened) == 1
    written = artifact.model.to_proto()
    assert [i.name for i in written.graph.input] == ["x"] and [o.name for o in written.graph.output] == ["y"]
    assert all(len(n.name) <= 2 for n in written.graph.node) and not written.graph.value_info
    assert artifact.manifest["compact"]["renamed"] > 0
    # compact=False keeps the names
    kept = compile(presso.load(proto), "cpu-x86", compact=False)
    assert "conv" in {n.name for n in kept.model.graph.nodes} and kept.manifest["compact"] is None

    # a quantized model: one session per int8 form timed, none for the checks around them
    opened.clear()
    artifact = compile(Model.from_proto(qdq_conv_model("int8")), "cpu-x86", form_rounds=1)
    assert len(opened) == len(artifact.manifest["int8_form"]["candidates"])
