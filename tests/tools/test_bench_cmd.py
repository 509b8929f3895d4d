import json

import numpy as np
import onnx
from onnx import numpy_helper

from presso.tools.main import main


def _scaled_copy(src, dst, factor):
    proto = onnx.load(str(src))
    for init in proto.graph.initializer:
        if init.name == "w":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, "w"))
    onnx.save(proto, str(dst))


def test_bench_json_report(tiny_model_path, tmp_path, capsys):
    other = tmp_path / "scaled.onnx"
    _scaled_copy(tiny_model_path, other, 1.01)
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((5, 1, 3, 8, 8)).astype(np.float32))
    assert main(["bench", str(tiny_model_path), str(other), "--data", str(data), "--json", "--runs", "3",
                 "--threads", "1,all"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"] == "tiny.onnx" and report["samples"] == 5
    assert report["threads"] == ["threads=1", "threads=all"]
    base, scaled = report["models"]
    assert base["agreement"]["max_abs"] == 0 and base["size_ratio"] == 1.0
    assert 0 < scaled["agreement"]["max_abs"] and scaled["agreement"]["cosine"] > 0.99
    assert set(scaled["latency"]) == {"threads=1", "threads=all"}
    assert report["notes"] == []


def test_bench_table_and_random_inputs_note(tiny_model_path, capsys):
    assert main(["bench", str(tiny_model_path), "--runs", "2", "--threads", "1", "--target", "cpu-x86"]) == 0
    printed = capsys.readouterr().out
    assert "tiny.onnx" in printed and "threads=1 median" in printed and "random inputs" in printed


def test_bench_bad_arguments(tiny_model_path, tmp_path, capsys):
    assert main(["bench", str(tiny_model_path), "--threads", "1,many"]) == 1
    assert "'many' is neither a number nor 'all'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", str(tiny_model_path), "--target", "cpu-z80"]) == 1
    assert "unknown target" in capsys.readouterr().err
