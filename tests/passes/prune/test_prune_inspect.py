"""`presso inspect --prunable` lists the channel groups and why excluded ones are."""

from __future__ import annotations

import json

from prune_graphs import GraphBuilder

from presso.ir import save
from presso.passes import PassManager
from presso.tools.main import main


def saved_model(tmp_path):
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 16))
    y = b.op("LRN", [b.conv(x, 16, 8)], size=3)
    model = b.build(b.conv(y, 8, 4))
    path = tmp_path / "m.onnx"
    save(model, path)
    return model, path


def test_prunable_table(tmp_path, capsys):
    _, path = saved_model(tmp_path)
    assert main(["inspect", str(path), "--prunable"]) == 0
    text = capsys.readouterr().out
    assert "channel groups: 3 (1 prunable)" in text
    assert "LRN node 'lrn1' normalizes across neighbouring channels" in text
    assert "reaches graph output" in text


def test_prunable_json_and_pruning_records(tmp_path, capsys):
    model, _ = saved_model(tmp_path)
    PassManager.parse("prune-channels{ratio=0.5,round_to=1,min_channels=1}").run(model)
    path = tmp_path / "pruned.onnx"
    save(model, path)
    assert main(["inspect", str(path), "--prunable", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (conv1,) = [g for g in report["prunable"]["groups"] if g["sources"] == ["conv1"]]
    assert conv1["channels"] == 8 and conv1["reason"] == ""
    assert [r["layer"] for r in report["annotations"]["pruning"]] == ["conv1"]
