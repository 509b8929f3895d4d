"""What reaches the terminal: onnxruntime's own log lines go through Presso's logging, at the
level the user picks with -v/-q, instead of being written between Presso's lines."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from presso.ir import create_session
from presso.tools.main import configure_logging, main


def initializer_in_inputs() -> onnx.ModelProto:
    """y = x + w with the initializer w also listed as a graph input: onnxruntime warns about it."""
    x, w, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "xwy")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x, w], [y],
                              [numpy_helper.from_array(np.ones((1, 4), np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(autouse=True)
def _default_logging():
    yield
    configure_logging()  # tests below change the level; leave the default behind


def test_onnxruntime_warnings_become_log_records_not_raw_stderr(caplog, capfd):
    configure_logging()
    with caplog.at_level(logging.WARNING, logger="presso.onnxruntime"):
        session = create_session(initializer_in_inputs())
    assert session.run(None, {"x": np.zeros((1, 4), np.float32), "w": np.ones((1, 4), np.float32)})[0].sum() == 4
    records = [r for r in caplog.records if r.name == "presso.onnxruntime"]
    assert any(r.levelno == logging.WARNING and "appears in graph inputs" in r.getMessage() for r in records)
    assert "[W:onnxruntime" not in capfd.readouterr().err


def test_quiet_hides_them_and_the_cli_prints_them_as_presso_lines(capfd):
    configure_logging(quiet=True)
    create_session(initializer_in_inputs())
    assert "appears in graph inputs" not in capfd.readouterr().err
    configure_logging()
    create_session(initializer_in_inputs())
    err = capfd.readouterr().err
    assert "presso: warning: onnxruntime: Initializer w appears in graph inputs" in err
    assert "[W:onnxruntime" not in err


def test_verbose_adds_onnxruntime_info_lines(tmp_path, capfd):
    path = tmp_path / "m.onnx"
    onnx.save(initializer_in_inputs(), str(path))
    assert main(["opt", str(path), "-p", "fold-constants", "--verify", "-v"]) == 0
    err = capfd.readouterr().err
    assert "presso: info: onnxruntime:" in err and "[I:onnxruntime" not in err
    assert main(["opt", str(path), "-p", "fold-constants", "--verify"]) == 0
    assert "info" not in capfd.readouterr().err
