"""Nothing leaves Presso unless onnx.checker (full check) accepts it and onnxruntime loads it:
a broken model raises InvalidModelError, writes nothing and leaves an old file untouched."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from _graphs import init, make_proto, rand, vi
from onnx import helper

from presso.ir import InvalidModelError, load, save


def _relu_model():
    return load(make_proto([helper.make_node("Relu", ["x"], ["y"], name="act")], [vi("x", [1, 4])], [vi("y", [1, 4])]))


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_that_fails_the_checker_is_not_written(tmp_path):
    model = _relu_model()
    model.graph.nodes[0].inputs[0] = gs.Variable("nowhere", dtype=np.float32, shape=[1, 4])  # reads nothing
    model.annotations.history.append({"pass": "my-pass", "options": {}})
    target = tmp_path / "out.onnx"
    with pytest.raises(InvalidModelError, match="onnx.checker") as info:
        save(model, target)
    assert "my-pass" in str(info.value) and "nowhere" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no output, no leftover temporary file


def test_a_model_onnxruntime_refuses_is_not_written_and_the_old_file_stays(tmp_path):
    target = tmp_path / "out.onnx"
    save(_relu_model(), target)
    before = _digest(target)
    # valid ONNX that onnxruntime has no kernel for: a batch-wise (layout=1) LSTM
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], name="lstm", hidden_size=2, layout=1)
    refused = load(make_proto([lstm], [vi("x", [1, 3, 4])], [vi("h", [1, 1, 2])],
                              [init("w", rand([1, 8, 4])), init("r", rand([1, 8, 2], seed=1))], opset=14))
    with pytest.raises(InvalidModelError, match="onnxruntime cannot load"):
        save(refused, target)
    assert _digest(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_engine_none_skips_the_load_but_not_the_checker(tmp_path):
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], name="lstm", hidden_size=2, layout=1)
    model = load(make_proto([lstm], [vi("x", [1, 3, 4])], [vi("h", [1, 1, 2])],
                            [init("w", rand([1, 8, 4])), init("r", rand([1, 8, 2], seed=1))], opset=14))
    assert load(save(model, tmp_path / "for-another-engine.onnx", engine=None)).nodes("LSTM")


def test_model_save_is_the_validated_save(tmp_path):
    written = _relu_model().save(tmp_path / "m.onnx")
    assert load(written).nodes("Relu")
