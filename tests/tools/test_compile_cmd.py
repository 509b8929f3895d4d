import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import presso
from presso.tools.main import main


def test_compile_writes_a_loadable_artifact(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["compile", str(tiny_model_path), "--target", "cpu-x86", "--backend", "onnxruntime",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cpu-x86" in printed and "model.ort-optimized.onnx" in printed and "verified" in printed
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.ort-optimized.onnx", "manifest.json"}
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(tiny_model_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(presso.load_artifact(out).run({"x": x})["y"], expected, rtol=1e-5, atol=1e-5)


def test_compile_shape_and_json(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "dyn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert main(["compile", str(path), "-o", str(tmp_path / "a"), "--shape", "x=2,3,16,16", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["inputs"][0]["shape"] == [2, 3, 16, 16]
    assert manifest["outputs"][0]["shape"] == [2, 3, 16, 16]
    assert main(["compile", str(path), "-o", str(tmp_path / "b"), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["inputs"][0]["shape"] == ["N", 3, "H", "W"] and manifest["dynamic_inputs"] == ["x"]


def test_compile_errors_exit_non_zero_without_traceback(tiny_model_path, tmp_path, capsys):
    assert main(["compile", str(tiny_model_path), "--target", "cpu-z80", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "unknown target 'cpu-z80'" in err and "cpu-x86" in err and "Traceback" not in err
    assert main(["compile", str(tiny_model_path)]) == 1
    assert "-o OUTDIR" in capsys.readouterr().err
    assert main(["compile", str(tiny_model_path), "-o", str(tmp_path / "o"), "--shape", "y=1,2"]) == 1
    assert "unknown input" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_list_targets(capsys):
    assert main(["compile", "--list-targets"]) == 0
    printed = capsys.readouterr().out
    for name in ("cpu-x86", "cpu-arm64", "int8-symmetric", "cuda"):
        assert name in printed


def test_a_failed_compile_leaves_no_output_folder(tmp_path, capsys):
    # valid ONNX that onnxruntime has no kernel for (a batch-wise LSTM): the backend refuses it
    rng = np.random.default_rng(0)
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], name="lstm", hidden_size=2, layout=1)
    graph = helper.make_graph([lstm], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 2])],
                              [onnx.numpy_helper.from_array(rng.standard_normal((1, 8, 4)).astype(np.float32), "w"),
                               onnx.numpy_helper.from_array(rng.standard_normal((1, 8, 2)).astype(np.float32), "r")])
    path = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    out = tmp_path / "build"
    assert main(["compile", str(path), "--target", "cpu-x86", "--backend", "onnxruntime", "-o", str(out)]) != 0
    assert "lstm" in capsys.readouterr().err.lower()
    assert not out.exists()
