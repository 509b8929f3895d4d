"""DataSource: .npz files, folders, iterables; empty and malformed data; NaN checks."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import make_proto, vi
from onnx import helper

from presso.ir import CalibrationError, DataSource, check_finite, load, random_feeds


@pytest.fixture(scope="module")
def model():
    return load(make_proto([helper.make_node("Add", ["a", "b"], ["y"], name="add")],
                           [vi("a", [1, 3]), vi("b", [1, 3])], [vi("y", [1, 3])]))


def _arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((n, 3)).astype(np.float32), "b": rng.standard_normal((n, 3)).astype(np.float32)}


def _stack(feeds):
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def test_npz_file_streams_samples(tmp_path, model):
    arrays = _arrays(5)
    np.savez(tmp_path / "d.npz", **arrays)
    source = DataSource.open(tmp_path / "d.npz", model)
    feeds = list(source.feeds(batch=2))
    assert [f["a"].shape for f in feeds] == [(2, 3), (2, 3), (1, 3)]
    np.testing.assert_array_equal(_stack(feeds)["a"], arrays["a"])
    assert len(list(source.feeds(limit=3))) == 3
    assert len(list(source)) == 5  # re-readable


def test_npz_with_extra_sample_axis(tmp_path, model):
    arrays = {k: v[:, None, :] for k, v in _arrays(4).items()}  # [N, 1, 3] on a [1, 3] input
    np.savez(tmp_path / "d.npz", **arrays)
    feeds = list(DataSource.open(tmp_path / "d.npz", model))
    assert len(feeds) == 4 and feeds[0]["a"].shape == (1, 3)


def test_folder_of_files(tmp_path, model):
    for i in range(3):
        np.savez(tmp_path / f"part{i}.npz", **_arrays(2, seed=i))
    (tmp_path / "notes.txt").write_text("ignored")
    feeds = list(DataSource.open(tmp_path, model))
    assert len(feeds) == 6
    np.testing.assert_array_equal(feeds[2]["b"], _arrays(2, seed=1)["b"][:1])


def test_iterables_lists_and_callables(model):
    items = [{k: v[i:i + 1] for k, v in _arrays(3).items()} for i in range(3)]
    assert len(list(DataSource.open(items, model))) == 3
    source = DataSource.open(lambda: iter(items), model)
    assert len(list(source)) == 3 and len(list(source)) == 3  # a fresh iterator each time


def test_one_shot_generator_read_twice_says_so(model):
    items = [{k: v[i:i + 1] for k, v in _arrays(2).items()} for i in range(2)]
    source = DataSource.open((item for item in items), model)
    assert len(list(source)) == 2
    with pytest.raises(CalibrationError, match="one-shot iterator"):
        list(source)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.npz", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no .npz or .npy"),
    (lambda p: (p / "d.csv").write_text("1,2") and p / "d.csv", "unsupported data file type"),
])
def test_bad_paths(tmp_path, model, make, message):
    with pytest.raises(CalibrationError, match=message):
        DataSource.open(make(tmp_path), model)


def test_empty_and_malformed_data(tmp_path, model):
    np.savez(tmp_path / "zero.npz", a=np.zeros((0, 3), np.float32), b=np.zeros((0, 3), np.float32))
    with pytest.raises(CalibrationError, match="no samples"):
        list(DataSource.open(tmp_path / "zero.npz", model))
    with pytest.raises(CalibrationError, match="no samples"):
        list(DataSource.open([], model))
    np.savez(tmp_path / "half.npz", a=np.zeros((2, 3), np.float32))
    with pytest.raises(CalibrationError, match=r"no array for input\(s\) \['b'\]"):
        list(DataSource.open(tmp_path / "half.npz", model))
    np.savez(tmp_path / "counts.npz", a=np.zeros((2, 3), np.float32), b=np.zeros((3, 3), np.float32))
    with pytest.raises(CalibrationError, match="different sample counts"):
        list(DataSource.open(tmp_path / "counts.npz", model))
    np.savez(tmp_path / "rank.npz", a=np.zeros((2, 2, 3), np.float32), b=np.zeros((2, 2, 3), np.float32))
    with pytest.raises(CalibrationError, match="does not fit the model's rank-2 input"):
        list(DataSource.open(tmp_path / "rank.npz", model))
    with pytest.raises(CalibrationError, match="not a dict"):
        list(DataSource.open([np.zeros(3)], model))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="cannot read"):
        list(DataSource.open(tmp_path / "junk.npz", model))
    with pytest.raises(CalibrationError, match="no data"):
        DataSource.open(None, model)


def test_check_finite():
    check_finite({"a": np.ones(3, np.float32), "i": np.array([1, 2])})
    bad = np.array([1.0, np.nan, np.inf], np.float32)
    with pytest.raises(CalibrationError, match="'a' holds 2 NaN/Inf"):
        check_finite({"a": bad})


def test_random_feeds_match_specs(model):
    feeds = random_feeds(model, 3, seed=1)
    assert len(feeds) == 3 and feeds[0]["a"].shape == (1, 3) and feeds[0]["a"].dtype == np.float32
    assert not np.array_equal(feeds[0]["a"], feeds[1]["a"])
    np.testing.assert_array_equal(random_feeds(model, 1, seed=1)[0]["a"], feeds[0]["a"])  # reproducible


def test_static_batch_models_get_full_batches(tmp_path):
    model = load(make_proto([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [4, 3])], [vi("y", [4, 3])]))
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 3), np.float32))
    source = DataSource.open(tmp_path / "d.npz", model)
    assert source.model_batch == 4
    assert [f["x"].shape[0] for f in source.feeds()] == [4, 4]  # the 2 left over cannot run
    assert [f["x"].shape[0] for f in source.feeds(batch=6)] == [6, 4]  # other sizes: as asked
