"""DIR/results.json: every proposal counted and every new candidate written at once; a folder
holding a search is refused without --resume and checked against the new one with it."""

from __future__ import annotations

import json

import pytest

from presso.ir.errors import PressoError
from presso.search.store import SearchStore, candidate_key, read_results

SEARCH = {"model_sha1": "m1", "calib_sha1": "c1", "eval_sha1": "e1", "target": "cpu-x86", "metric": "top1"}


def _candidate(key: str) -> dict:
    return {"key": key, "pipeline": "eliminate-dead-code", "status": "ok", "drop": 0.0, "latency_ms": 1.0,
            "size_bytes": 10}


def test_each_record_is_on_disk_at_once(tmp_path):
    store = SearchStore(tmp_path, SEARCH, resume=False)
    assert store.record(_candidate("a")) and not store.record(_candidate("a")) and not store.record(None)
    on_disk = read_results(tmp_path)
    assert on_disk["proposals"] == 3 and [c["key"] for c in on_disk["candidates"]] == ["a"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written by rename


def test_resume_rules(tmp_path):
    SearchStore(tmp_path, SEARCH, resume=False).record(_candidate("a"))
    with pytest.raises(PressoError, match="already holds a search"):
        SearchStore(tmp_path, SEARCH, resume=False)
    with pytest.raises(PressoError, match="another metric"):
        SearchStore(tmp_path, {**SEARCH, "metric": "iou"}, resume=True)
    resumed = SearchStore(tmp_path, SEARCH, resume=True)
    assert resumed.proposals == 1 and list(resumed.finished()) == ["a"]
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(PressoError, match="cannot read the search results"):
        SearchStore(tmp_path, SEARCH, resume=True)


def test_keys_name_the_recipe():
    assert candidate_key("a,b", "onnxruntime") == candidate_key("a,b", "onnxruntime")
    assert candidate_key("a,b", "onnxruntime") != candidate_key("a,b", "tvm")
    assert candidate_key("a,b", "tvm") != candidate_key("a,c", "tvm")
    json.dumps(candidate_key("x", "y"))
