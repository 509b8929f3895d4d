"""Verification helpers: output metrics, tolerance checks, and onnx.checker without weight data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import init, make_proto, rand, vi
from onnx import helper

from presso.ir import load
from presso.passes.verify import check_model, compare_outputs, metrics, within_tolerance


def test_metrics_by_hand():
    ref = np.array([1.0, -2.0, 3.0, 0.0])
    cand = np.array([1.0, -2.5, 3.0, 0.5])
    m = metrics(ref, cand)
    assert m.max_abs == 0.5 and m.mean_abs == 0.25 and m.max_rel == pytest.approx(0.5 / 3)
    assert m.sqnr_db == pytest.approx(10 * np.log10(14 / 0.5))
    assert m.cosine == pytest.approx(float(ref @ cand / np.linalg.norm(ref) / np.linalg.norm(cand)))
    same = metrics(ref, ref)
    assert same.max_abs == 0 and same.sqnr_db == float("inf") and same.cosine == pytest.approx(1.0)


def test_compare_outputs_over_samples_and_shape_changes():
    a = [{"y": np.ones((2, 2))}, {"y": np.zeros((2, 2))}]
    b = [{"y": np.ones((2, 2))}, {"y": np.full((2, 2), 0.1)}]
    assert compare_outputs(a, b).max_abs == pytest.approx(0.1)
    with pytest.raises(ValueError, match="changed shape"):
        compare_outputs(a, [{"y": np.ones(4)}, {"y": np.ones(4)}])


def test_within_tolerance_is_relative_to_each_output_and_nan_aware():
    big = [{"a": np.array([1000.0, 0.0]), "b": np.array([1.0, 0.0])}]
    ok, _ = within_tolerance(big, [{"a": np.array([1000.05, 0.0]), "b": np.array([1.0, 0.0])}], rtol=1e-4, atol=0)
    assert ok  # 0.05 ≤ 1e-4 · 1000
    ok, worst = within_tolerance(big, [{"a": np.array([1000.0, 0.0]), "b": np.array([1.001, 0.0])}],
                                 rtol=1e-4, atol=0)
    assert not ok and "output 'b'" in worst  # judged against b's own scale, not a's
    nan = [{"y": np.array([np.nan, 1.0])}]
    assert within_tolerance(nan, nan, rtol=0, atol=0)[0]
    ok, worst = within_tolerance(nan, [{"y": np.array([0.0, 1.0])}], rtol=0, atol=0)
    assert not ok and "NaN" in worst


def test_check_model_leaves_large_weights_out_but_still_checks():
    w = rand((700, 400))  # 1.1 MB: left out of the proto the checker sees
    good = load(make_proto([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                           [vi("x", [1, 700])], [vi("y", [1, 400])], [init("w", w)]))
    check_model(good)
    good.node("mm").op = "NoSuchOp"
    with pytest.raises(onnx.checker.ValidationError, match="NoSuchOp"):
        check_model(good)
