"""The bad-input corpus for calibration and evaluation data (issue 10).

Each case is one class of bad data. It must be rejected by ``DataSource`` as a one-line
:class:`CalibrationError` naming the input, the file or item and (where it applies) the sample
index, and the same through ``PassManager.run(..., data=...)`` and ``presso opt --data``, with
the model and data files unchanged and no output written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from _graphs import init, make_proto, rand, vi
from _rejects import assert_clean_error, assert_cli_rejects, snapshot
from onnx import helper

from presso.ir import CalibrationError, DataSource, load
from presso.passes import PassManager


def _two_input_proto() -> onnx.ModelProto:
    """image[N,8] · mask[N,8] → MatMul(w) → y[N,4]: two inputs, so counts can disagree."""
    nodes = [helper.make_node("Mul", ["image", "mask"], ["m"], name="mul"),
             helper.make_node("MatMul", ["m", "w"], ["y"], name="mm")]
    return make_proto(nodes, [vi("image", ["N", 8]), vi("mask", ["N", 8])], [vi("y", ["N", 4])],
                      [init("w", rand((8, 4), seed=1))])


def _ids_proto() -> onnx.ModelProto:
    """ids[N,6] int32 → Gather(table) → y: a model that takes integers."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")]
    return make_proto(nodes, [vi("ids", ["N", 6], np.int32)], [vi("y", ["N", 6, 4])],
                      [init("table", rand((256, 4)))])


def _good(n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": rand((n, 8), seed=seed), "mask": np.ones((n, 8), np.float32)}


def _nan_in_second_file(folder: Path) -> Path:
    """Two files of 4 samples; row 1 of the second holds NaN and Inf: global sample 5."""
    folder.mkdir()
    np.savez(folder / "a.npz", **_good(4, seed=1))
    bad = _good(4, seed=2)
    bad["image"][1, 3], bad["image"][1, 6] = np.nan, np.inf
    np.savez(folder / "b.npz", **bad)
    return folder


def _npz(arrays: dict[str, np.ndarray]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        folder.mkdir()
        np.savez(folder / "data.npz", **arrays)
        return folder / "data.npz"
    return build


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    needles: tuple[str, ...]
    proto: Callable[[], onnx.ModelProto] = _two_input_proto


CASES = {
    "missing-input": Case(_npz({"image": rand((4, 8))}), ("no array for input", "'mask'", "data.npz")),
    "wrong-dtype-int-for-float": Case(_npz({"image": np.zeros((4, 8), np.uint8), "mask": np.ones((4, 8), np.float32)}),
                                      ("'image'", "expects dtype float32", "uint8", "preprocessing")),
    "wrong-dtype-float-for-int": Case(_npz({"ids": rand((4, 6))}), ("'ids'", "expects dtype int32", "float32",
                                                                    "integers"), _ids_proto),
    "wrong-rank": Case(_npz({"image": rand((4, 2, 8)), "mask": np.ones((4, 8), np.float32)}),
                       ("'image'", "shape [4, 2, 8]", "rank-2")),
    "zero-samples": Case(_npz({"image": np.zeros((0, 8), np.float32), "mask": np.zeros((0, 8), np.float32)}),
                         ("no samples",)),
    "nan-inf-values": Case(_nan_in_second_file, ("'image'", "2 NaN/Inf", "sample 5", "b.npz")),
    "mismatched-sample-counts": Case(_npz({"image": rand((4, 8)), "mask": np.ones((3, 8), np.float32)}),
                                     ("'mask' has 3", "'image' has 4", "data.npz")),
}


@pytest.mark.parametrize("name", CASES)
def test_data_source_rejects(tmp_path, name):
    case = CASES[name]
    data = case.build(tmp_path / "data")
    before = snapshot(tmp_path)
    source = DataSource.open(data, load(case.proto()))
    with pytest.raises(CalibrationError) as info:
        list(source.feeds())
    assert_clean_error(info.value, *case.needles, kind=CalibrationError)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", CASES)
def test_pipeline_rejects(tmp_path, name):
    """Calibration meets the bad data through the pass manager (data streams, so a bad sample
    late in the data is found when calibration reaches it)."""
    case = CASES[name]
    with pytest.raises(CalibrationError) as info:
        PassManager.parse("insert-qdq,calibrate", verify=True).run(load(case.proto()),
                                                                   data=case.build(tmp_path / "data"))
    assert_clean_error(info.value, *case.needles, kind=CalibrationError)


@pytest.mark.parametrize("name", ["missing-input", "wrong-dtype-int-for-float", "zero-samples", "nan-inf-values",
                                  "mismatched-sample-counts"])
def test_cli_rejects(tmp_path, capfd, name):
    case = CASES[name]
    data = case.build(tmp_path / "data")
    model_path = tmp_path / "m.onnx"
    onnx.save(case.proto(), str(model_path))
    out = tmp_path / "out.onnx"
    assert_cli_rejects(capfd, ["opt", str(model_path), "-p", "insert-qdq,calibrate", "--data", str(data),
                               "-o", str(out)], *case.needles, watch=[tmp_path], must_not_exist=[out])


@pytest.mark.parametrize("items, needles", [
    ([_good(2), "not a dict"], ("data item 1", "str")),
    ([{"image": [[1.0, 2.0], [3.0]], "mask": np.ones((2, 8), np.float32)}], ("'image'", "not an array")),
    ([_good(2), {"image": rand((2, 8)), "mask": np.full((2, 8), np.nan, np.float32)}],
     ("'mask'", "data item 1", "sample 2")),
])
def test_bad_items_in_python_iterables(items, needles):
    source = DataSource.open(items, load(_two_input_proto()))
    with pytest.raises(CalibrationError) as info:
        list(source.feeds())
    assert needles[0] in str(info.value)
    for needle in needles:
        assert needle in str(info.value)


def test_float64_and_int64_data_are_cast_to_the_model_dtype():
    """numpy's defaults (float64, int64) are not bad data: they are cast when nothing is lost."""
    floats = DataSource.open([{"image": rand((2, 8)).astype(np.float64), "mask": np.ones((2, 8))}],
                             load(_two_input_proto()))
    feed = next(floats.feeds())
    assert feed["image"].dtype == np.float32 and feed["mask"].dtype == np.float32
    ids = DataSource.open([{"ids": np.arange(12, dtype=np.int64).reshape(2, 6)}], load(_ids_proto()))
    assert next(ids.feeds())["ids"].dtype == np.int32
    too_big = DataSource.open([{"ids": np.full((2, 6), 2**40, dtype=np.int64)}], load(_ids_proto()))
    with pytest.raises(CalibrationError, match="outside the model's int32 range"):
        list(too_big.feeds())
