import json
import subprocess
import sys

from presso.tools.main import main


def test_inspect_json_has_the_documented_keys(tiny_model_path, capsys):
    assert main(["inspect", str(tiny_model_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("nodes", "op_counts", "params", "flops", "size_bytes", "inputs", "outputs"):
        assert key in summary
    assert summary["nodes"] == 4
    assert summary["op_counts"] == {"Conv": 1, "BatchNormalization": 1, "Relu": 1, "Identity": 1}
    # conv: 4·3·3·3 weights + 4 bias; BN: 4 × 4 parameters
    assert summary["params"] == 108 + 4 + 16
    # conv MACs = out elements (4·8·8) × (3·3·3) per output
    assert summary["macs"] == 4 * 8 * 8 * 27
    assert summary["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}]
    assert summary["size_bytes"] == tiny_model_path.stat().st_size


def test_inspect_table_and_layers(tiny_model_path, capsys):
    assert main(["inspect", str(tiny_model_path), "--layers"]) == 0
    out = capsys.readouterr().out
    assert "BatchNormalization" in out and "parameters" in out
    assert "1×4×8×8" in out  # per-layer output shape


def test_inspect_dot(tiny_model_path, tmp_path):
    dot = tmp_path / "g.dot"
    assert main(["inspect", str(tiny_model_path), "--dot", str(dot)]) == 0
    text = dot.read_text()
    assert text.startswith("digraph") and text.count("->") >= 4 and "BatchNormalization" in text


def test_inspect_shows_annotations_after_opt(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["opt", str(tiny_model_path), "-p", "fold-batchnorm", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [h["pass"] for h in summary["annotations"]["history"]] == ["fold-batchnorm"]


def test_bad_inputs_give_one_line_errors_through_the_cli(tiny_model_path, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    good = tiny_model_path.read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    missing = tmp_path / "missing.onnx"
    for path, phrase in ((truncated, "not an ONNX model"), (text, "not an ONNX model"), (missing, "does not exist")):
        result = subprocess.run([sys.executable, "-m", "presso.tools.main", "inspect", str(path)],
                                capture_output=True, text=True)
        assert result.returncode != 0
        assert phrase in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert str(path) in result.stderr



def test_inspect_size_breakdown_adds_up_to_the_file(tiny_model_path, capsys):
    assert main(["inspect", str(tiny_model_path), "--size", "--json"]) == 0
    breakdown = json.loads(capsys.readouterr().out)["size_breakdown"]
    assert breakdown["total"] == tiny_model_path.stat().st_size
    assert sum(breakdown["categories"].values()) == breakdown["total"]
    # conv weight 4·3·3·3 and bias 4, BN 4 × 4: all float32
    assert breakdown["categories"]["float weights"] == 4 * (108 + 4 + 16)
    assert main(["inspect", str(tiny_model_path), "--size"]) == 0
    out = capsys.readouterr().out
    assert "bytes by role" in out and "float weights" in out and "names" in out
