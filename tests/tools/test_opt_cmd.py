import json

import numpy as np
import onnxruntime as ort

from presso.tools.main import main


def _run(model_path, feeds):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_opt_runs_pipeline_writes_model_and_matches_onnxruntime(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    original_bytes = tiny_model_path.read_bytes()
    code = main(["opt", str(tiny_model_path), "-p", "fold-batchnorm{eps_check=true},remove-identity",
                 "-o", str(out), "--verify"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fold-batchnorm" in printed and "remove-identity" in printed
    assert "4 → 3" in printed  # BN folded away
    assert tiny_model_path.read_bytes() == original_bytes  # input never modified
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(out, {"x": x}), _run(tiny_model_path, {"x": x}), rtol=1e-5, atol=1e-5)


def test_opt_json_report(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["opt", str(tiny_model_path), "-p", "fold-batchnorm,remove-identity", "-o", str(out),
                 "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["pass"] for p in report["passes"]] == ["fold-batchnorm", "remove-identity"]
    assert report["passes"][0]["stats"]["folded"] == 1
    assert report["passes"][0]["error"]["max_abs"] < 1e-4
    assert report["after"]["nodes"] == 2 and report["before"]["nodes"] == 4


def test_opt_dump_dir_saves_each_stage(tiny_model_path, tmp_path):
    dump = tmp_path / "dump"
    assert main(["opt", str(tiny_model_path), "-p", "fold-batchnorm,remove-identity", "--dump-dir", str(dump)]) == 0
    assert sorted(p.name for p in dump.iterdir()) == ["01-fold-batchnorm.onnx", "02-remove-identity.onnx"]


def test_opt_with_data_file(tiny_model_path, tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32))
    assert main(["opt", str(tiny_model_path), "-p", "fold-batchnorm", "--data", str(data), "--verify"]) == 0


def test_opt_recipe(tiny_model_path, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pipeline:\n  - name: fold-batchnorm\n    options: {eps_check: true}\n  - remove-identity\n")
    out = tmp_path / "out.onnx"
    assert main(["opt", str(tiny_model_path), "--recipe", str(recipe), "-o", str(out)]) == 0
    assert out.exists()


def test_opt_unknown_pass_is_a_clear_error(tiny_model_path, capsys):
    code = main(["opt", str(tiny_model_path), "-p", "fold-batchnrom", "-o", "unused.onnx"])
    err = capsys.readouterr().err
    assert code != 0
    assert "unknown pass 'fold-batchnrom'" in err and "fold-batchnorm" in err
    assert "Traceback" not in err


def test_opt_unknown_option_lists_valid_ones(tiny_model_path, capsys):
    code = main(["opt", str(tiny_model_path), "-p", "fold-batchnorm{epsilon_check=true}"])
    err = capsys.readouterr().err
    assert code != 0 and "eps_check" in err


def test_opt_refuses_to_overwrite_input(tiny_model_path, capsys):
    before = tiny_model_path.read_bytes()
    code = main(["opt", str(tiny_model_path), "-p", "remove-identity", "-o", str(tiny_model_path)])
    assert code != 0
    assert "overwrite" in capsys.readouterr().err
    assert tiny_model_path.read_bytes() == before


def test_list_passes(capsys):
    assert main(["opt", "--list-passes"]) == 0
    out = capsys.readouterr().out
    for name in ("fold-constants", "fold-batchnorm", "eliminate-dead-code", "upgrade-opset", "infer-shapes"):
        assert name in out


def _activation_zero_point_types(path):
    import onnx

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return {inits[n.input[2]].data_type for n in model.graph.node  # activations: Q of a computed tensor
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits and n.input[0] not in inits}


def test_opt_target_gives_insert_qdq_the_targets_scheme(tiny_model_path, tmp_path):
    """`--target int8-symmetric` quantizes activations to int8, as presso.quantize(target=...)
    does; without it insert-qdq's default scheme (u8s8) gives uint8; explicit options win."""
    from onnx import TensorProto

    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 1, 3, 8, 8)).astype(np.float32))
    pipeline = "insert-qdq,calibrate{method=minmax}"
    runs = {"target": ["--target", "int8-symmetric"], "default": [],
            "override": ["--target", "int8-symmetric", "-p", "insert-qdq{activations=uint8},calibrate{method=minmax}"]}
    types = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.onnx"
        argv = ["opt", str(tiny_model_path), "--data", str(data), "-o", str(out), "--no-progress", *extra]
        if "-p" not in extra:
            argv += ["-p", pipeline]
        assert main(argv) == 0
        types[name] = _activation_zero_point_types(out)
    assert types["target"] == {TensorProto.INT8}
    assert types["default"] == {TensorProto.UINT8}
    assert types["override"] == {TensorProto.UINT8}


def test_opt_target_typo_fails_before_loading(tmp_path, capsys):
    assert main(["opt", str(tmp_path / "missing.onnx"), "--target", "cpu-x68", "-p", "insert-qdq"]) != 0
    assert "cpu-x68" in capsys.readouterr().err
