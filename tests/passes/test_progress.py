"""Progress bars of calibration and training show the total (n/N, %, time left) whenever the
number of samples can be known; `sample_count` reads it without loading the data."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from presso.ir import DataSource, load
from presso.passes import PassContext, PassManager
from presso.passes.progress import sample_count


def _model():
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(rng.standard_normal((3, 6)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 6)).astype(np.float32)


def test_sample_count_of_every_kind_of_data(tmp_path):
    model = _model()
    np.savez(tmp_path / "a.npz", x=_x(20), labels=np.zeros(20, np.int64))
    folder = tmp_path / "folder"
    folder.mkdir()
    np.savez(folder / "1.npz", x=_x(5))
    np.save(folder / "2.npy", _x(7))
    assert sample_count(tmp_path / "a.npz") == 20
    assert sample_count(DataSource.open(str(tmp_path / "a.npz"), model)) == 20
    assert sample_count(DataSource.open(str(folder), model)) == 12
    assert sample_count({"x": _x(9)}) == 9
    assert sample_count([{"x": _x(2)}, {"x": _x(3)}]) == 5
    assert sample_count({"x": _x(9)}, limit=4) == 4
    assert sample_count(iter([{"x": _x(2)}])) is None  # a one-shot iterator: unknown until read
    assert sample_count(iter([{"x": _x(2)}]), limit=8) == 8


def test_calibration_bar_shows_total_and_percentage(capsys):
    model = _model()
    ctx = PassContext(data={"x": _x(24)}, progress=True)
    PassManager.parse("insert-qdq,calibrate{method=minmax}").run(model, ctx=ctx)
    err = capsys.readouterr().err
    assert "calibrate" in err and "/24" in err and "%" in err


def test_training_bar_counts_samples_over_all_epochs(capsys):
    pytest.importorskip("torch")
    model = _model()
    ctx = PassContext(data={"x": _x(10)}, labels=np.arange(10) % 3, progress=True)
    PassManager.parse("finetune{epochs=3,batch=4}").run(model, ctx=ctx)
    err = capsys.readouterr().err
    assert "finetune" in err and "/30" in err and "%" in err  # 3 epochs × 10 samples
