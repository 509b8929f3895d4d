"""Verification helpers: output metrics (also those of `presso bench`), tolerance checks, and
onnx.checker without weight data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import init, make_proto, rand, vi
from onnx import helper

from presso.ir import load
from presso.passes.verify import (
    check_model,
    compare_outputs,
    compare_pairs,
    is_distribution,
    metrics,
    top1_agreement,
    within_tolerance,
)


def test_metrics_by_hand():
    ref = np.array([1.0, -2.0, 3.0, 0.0])
    cand = np.array([1.0, -2.5, 3.0, 0.5])
    m = metrics(ref, cand)
    assert m.max_abs == 0.5 and m.mean_abs == 0.25 and m.max_rel == pytest.approx(0.5 / 3)
    assert m.sqnr_db == pytest.approx(10 * np.log10(14 / 0.5))
    assert m.cosine == pytest.approx(float(ref @ cand / np.linalg.norm(ref) / np.linalg.norm(cand)))
    same = metrics(ref, ref)
    assert same.max_abs == 0 and same.sqnr_db == float("inf") and same.cosine == pytest.approx(1.0)


def test_metrics_non_finite_values():
    inf, nan = np.inf, np.nan
    # the same NaN or the same infinity at the same place agrees; the rest is measured as usual
    agree = metrics(np.array([nan, inf, -inf, 3.0, 4.0]), np.array([nan, inf, -inf, 3.0, 4.5]))
    assert agree.max_abs == 0.5 and agree.mean_abs == pytest.approx(0.1)
    assert agree.max_rel == pytest.approx(0.5 / 4)  # scale from the finite reference values
    assert agree.sqnr_db == pytest.approx(10 * np.log10(25 / 0.25))
    assert agree.cosine == pytest.approx((9 + 18) / 5 / np.hypot(3, 4.5))
    # a non-finite value on one side only, opposite infinities, NaN against inf: infinite error
    for ref, cand in [([nan, 1.0], [0.0, 1.0]), ([1.0, 1.0], [inf, 1.0]), ([inf, 1.0], [-inf, 1.0]),
                      ([nan, 1.0], [inf, 1.0])]:
        m = metrics(np.array(ref), np.array(cand))
        assert m.max_abs == inf and m.sqnr_db == -inf and m.max_rel == inf, (ref, cand)
        assert m.cosine == pytest.approx(1.0), (ref, cand)  # over the finite positions (1 vs 1)
    assert metrics(np.array([nan]), np.array([nan])).cosine == 1.0  # nothing finite, nothing differs


def test_compare_outputs_over_samples_and_shape_changes():
    a = [{"y": np.ones((2, 2))}, {"y": np.zeros((2, 2))}]
    b = [{"y": np.ones((2, 2))}, {"y": np.full((2, 2), 0.1)}]
    assert compare_outputs(a, b).max_abs == pytest.approx(0.1)
    with pytest.raises(ValueError, match="changed shape"):
        compare_outputs(a, [{"y": np.ones(4)}, {"y": np.ones(4)}])


def test_top1_agreement_and_distributions():
    softmax = np.exp(np.arange(6.0)).reshape(2, 3)
    softmax /= softmax.sum(-1, keepdims=True)
    assert is_distribution(softmax)
    assert not is_distribution(1 / (1 + np.exp(-np.ones((1, 1, 4, 4)))))  # a sigmoid map
    assert not is_distribution(np.array([[0.5, 0.5, 0.5]]))
    assert not is_distribution(np.array([[np.nan, 1.0]]))
    assert not is_distribution(np.array([1.0]))  # one class
    flipped = softmax.copy()
    flipped[1] = flipped[1, ::-1]  # the second row's winner moves
    logits = np.log(softmax)  # not a distribution: ignored
    pairs = [("p", softmax, flipped), ("logits", logits, -logits), ("p", softmax, softmax)]
    assert top1_agreement(pairs) == 3 / 4
    assert top1_agreement(pairs[1:2]) is None
    assert compare_pairs(pairs) == compare_outputs([{"p": softmax, "logits": logits}, {"p": softmax}],
                                                   [{"p": flipped, "logits": -logits}, {"p": softmax}])


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
