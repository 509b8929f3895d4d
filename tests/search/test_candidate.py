"""One candidate in its own process: built, scored and timed; a candidate whose model turns
invalid is an error text, not a crash of the search; the machine lock keeps timing alone."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from presso.ir import evaluate, load
from presso.search.candidate import read_outputs
from presso.search.runner import _run_child
from presso.search.timing import MachineLock
from search_models import log_of_relu, positive_data


def _job(tmp_path, pipeline: str, name: str) -> tuple[dict, str]:
    out = tmp_path / name
    out.mkdir()
    job = {"model": str(tmp_path / "m.onnx"), "calib": str(tmp_path / "calib.npz"), "eval": str(tmp_path / "eval.npz"),
           "pipeline": pipeline, "backend": "onnxruntime", "target": "cpu-x86", "seed": 0, "out": str(out),
           "lock_dir": str(tmp_path / "locks")}
    (out / "job.json").write_text(json.dumps(job))
    return job, str(out / "job.json")


@pytest.mark.slow  # three child processes; the local search test builds candidates the same way
def test_build_score_and_time(tmp_path):
    log_of_relu(tmp_path / "m.onnx")
    positive_data(tmp_path / "calib.npz", 8, seed=0)
    positive_data(tmp_path / "eval.npz", 4, seed=1)
    job, path = _job(tmp_path, "eliminate-dead-code", "float")
    assert _run_child(["build", path], 300, tmp_path / "float") is None
    built = json.loads((tmp_path / "float" / "result.json").read_text())
    outputs = read_outputs(tmp_path / "float" / "outputs.npz")
    x = np.load(tmp_path / "eval.npz")["x"]
    assert len(outputs) == built["samples"] == 4
    for i, sample in enumerate(outputs):  # the artifact computes what the float model computes
        np.testing.assert_allclose(sample["y"], evaluate(load(tmp_path / "m.onnx"), {"x": x[i:i + 1]})["y"], rtol=1e-5)
    assert 0 < built["size_bytes"] < 2000
    np.savez(tmp_path / "feed.npz", x=x[:1])
    from presso.search.candidate import time_artifact

    timing = time_artifact(built["artifact"], str(tmp_path / "feed.npz"), 3, 1)
    assert timing["latency_ms"] > 0 and timing["latency_p90_ms"] >= timing["latency_ms"]

    _, path = _job(tmp_path, "insert-qdq,calibrate{method=minmax},bias-correction,fold-qdq", "int8")
    error = _run_child(["build", path], 300, tmp_path / "int8")
    assert error and "not finite" in error and "'y'" in error
    _, path = _job(tmp_path, "prune-channels{ratio=2}", "bad")
    assert "ratio" in _run_child(["build", path], 300, tmp_path / "bad")


def test_timing_waits_for_compressions_to_finish(tmp_path):
    lock = MachineLock(tmp_path)
    compressing, timed = threading.Event(), threading.Event()

    def time_it():
        with lock.exclusive():
            timed.set()

    with lock.shared():
        compressing.set()
        timer = threading.Thread(target=time_it)
        timer.start()
        timer.join(0.3)
        assert not timed.is_set()  # a compression holds the cores
    timer.join(30)
    assert timed.is_set()


def test_a_candidate_past_its_time_limit_is_stopped(tmp_path):
    log_of_relu(tmp_path / "m.onnx")
    positive_data(tmp_path / "calib.npz", 4, seed=0)
    positive_data(tmp_path / "eval.npz", 4, seed=1)
    _, path = _job(tmp_path, "distill{epochs=100000}", "slow")
    assert _run_child(["build", path], 0.5, tmp_path / "slow") == "timed out after 0.5 s"
    assert not (tmp_path / "slow" / "result.json").exists()
