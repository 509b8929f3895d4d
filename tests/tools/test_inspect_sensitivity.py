"""`presso inspect MODEL --sensitivity --data D [--metric …]` on magika with real files."""

import json

import numpy as np
import pytest

from presso.tools import zoo
from presso.tools.main import main


@pytest.fixture
def magika_npz(tmp_path):
    features, _ = zoo.magika_dataset(24)
    path = tmp_path / "magika.npz"
    np.savez(path, bytes=features)
    return path


def test_sensitivity_table_then_cached(magika_npz, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRESSO_CACHE", str(tmp_path / "cache"))
    args = ["inspect", str(zoo.magika_model()), "--sensitivity", "--data", str(magika_npz), "--metric", "cosine",
            "--samples", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "metric cosine on 8 samples" in out and "SQNR alone dB" in out and "[cached]" not in out
    assert list((tmp_path / "cache" / "sensitivity").glob("*.json"))
    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)["sensitivity"]
    assert report["cached"] and report["metric"] == "cosine" and report["layers"]
    assert all(layer["only_quantized_sqnr"] is not None for layer in report["layers"])


def test_sensitivity_needs_data_and_a_known_metric(magika_npz, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRESSO_CACHE", str(tmp_path / "cache"))
    assert main(["inspect", str(zoo.magika_model()), "--sensitivity"]) != 0
    assert "--sensitivity needs --data" in capsys.readouterr().err
    assert main(["inspect", str(zoo.magika_model()), "--sensitivity", "--data", str(magika_npz),
                 "--metric", "top5"]) != 0
    assert "unknown metric 'top5'" in capsys.readouterr().err
