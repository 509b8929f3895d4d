"""Pareto fronts over (drop, latency, size)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from presso.search.pareto import beats, dominates, pareto_front


def _c(drop, latency, size, key="k"):
    return {"key": key, "drop": drop, "latency_ms": latency, "size_bytes": size}


def test_dominance_and_front():
    a, b, c = _c(0.0, 10, 100, "a"), _c(0.1, 5, 100, "b"), _c(0.1, 10, 100, "c")
    assert dominates(a, c) and dominates(b, c) and not dominates(a, b) and not dominates(b, a)
    assert [x["key"] for x in pareto_front([a, b, c])] == ["a", "b"]
    failed = {"key": "f", "drop": float("nan"), "latency_ms": 1, "size_bytes": 1}
    assert [x["key"] for x in pareto_front([failed, c])] == ["c"]
    assert beats(_c(0.0, 5, 100), b) and not beats(_c(0.0, 6, 100), b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=20))
def test_front_is_exactly_the_undominated(points):
    candidates = [_c(*p, key=str(i)) for i, p in enumerate(points)]
    front = pareto_front(candidates)
    keys = {c["key"] for c in front}
    for c in candidates:
        dominated = any(dominates(o, c) for o in candidates)
        assert (c["key"] in keys) == (not dominated)
    assert front  # a finite set always has an undominated member
