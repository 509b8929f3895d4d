"""`presso search` end to end on a local, in-process Ray: a failing candidate is recorded and
the search goes on; results, charts, the front's artifacts, replay with `presso opt -p`, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ray.tune", reason="presso search needs the `search` extra (ray[tune], optuna)")
pytest.importorskip("optuna", reason="presso search needs the `search` extra (ray[tune], optuna)")

from presso import load_artifact  # noqa: E402
from presso.ir import evaluate, load  # noqa: E402
from presso.tools.main import main  # noqa: E402
from search_models import log_of_relu, positive_data  # noqa: E402


def test_search_records_an_invalid_candidate_and_goes_on(tmp_path, capsys):
    model = log_of_relu(tmp_path / "m.onnx")
    calib = positive_data(tmp_path / "calib.npz", 16, seed=0)
    evaluation = positive_data(tmp_path / "eval.npz", 8, seed=1)
    (tmp_path / "space.yaml").write_text("quant: [none, int8]\ncalibration: [minmax]\nbackend: [onnxruntime]\n")
    out = tmp_path / "search"
    args = ["search", str(model), "--data", str(calib), "--eval", str(evaluation), "--metric", "mse", "--budget", "2",
            "-o", str(out), "--space", str(tmp_path / "space.yaml"), "--runs", "5", "--timeout", "300"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    by_label = {c["label"]: c for c in results["candidates"]}
    assert set(by_label) == {"float · ort", "int8 minmax · ort"}
    broken, float_model = by_label["int8 minmax · ort"], by_label["float · ort"]
    assert broken["status"] == "error" and "not finite" in broken["error"]
    assert float_model["status"] == "ok" and float_model["drop"] == 0.0 and float_model["latency_ms"] > 0
    assert results["front"] == [float_model["key"]] and float_model["key"] in printed
    assert results["proposals"] == 2

    # the front's artifact runs and computes the float model's outputs
    feed = {"x": np.load(evaluation)["x"][:1]}
    artifact = load_artifact(out / "front" / float_model["key"])
    np.testing.assert_allclose(artifact.run(feed)["y"], evaluate(load(model), feed)["y"], rtol=1e-5)
    # every recorded pipeline replays with `presso opt -p`
    for record in results["candidates"]:
        replayed = tmp_path / f"{record['key']}.onnx"
        assert main(["opt", str(model), "-p", record["pipeline"], "--data", str(calib), "--target", "cpu-x86",
                     "-o", str(replayed), "--no-progress"]) == 0
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "front.html").read_text()
    assert "plotly" in html.lower() and float_model["pipeline"] in html
    assert "Pareto front" in (out / "front.txt").read_text()

    # the same folder without --resume is refused; with it, a finished budget runs nothing
    assert main(args) != 0
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["candidates"] == results["candidates"]


def test_an_unreachable_cluster_fails_before_writing(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = log_of_relu(tmp_path / "m.onnx")
    calib = positive_data(tmp_path / "calib.npz", 4, seed=0)
    out = tmp_path / "search"
    assert main(["search", str(model), "--data", str(calib), "--eval", str(calib), "--budget", "1", "-o", str(out),
                 "--ray-address", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert not out.exists()
