"""Pareto fronts: the candidates no other candidate beats on every objective at once.

Objectives are minimized (a task metric enters as its drop against the float model). A
candidate *dominates* another when it is no worse on every objective and better on at least
one; the front is the set of candidates nothing dominates. Adding candidates can only remove
members from a front, never bring back one that was dominated (dominance is transitive), so a
search that goes on may delete what it kept for dominated candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

OBJECTIVES = ("drop", "latency_ms", "size_bytes")


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Sequence[str] = OBJECTIVES) -> bool:
    """True when ``a`` is no worse than ``b`` on every objective and better on one."""
    return all(a[k] <= b[k] for k in objectives) and any(a[k] < b[k] for k in objectives)


def pareto_front(candidates: Sequence[Mapping[str, Any]], objectives: Sequence[str] = OBJECTIVES
                 ) -> list[Mapping[str, Any]]:
    """The non-dominated candidates among those with every objective measured, in input order.
    Candidates with equal objectives are all kept."""
    scored = [c for c in candidates if all(isinstance(c.get(k), (int, float)) and c[k] == c[k] for k in objectives)]
    return [c for c in scored if not any(dominates(other, c, objectives) for other in scored if other is not c)]


def beats(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """``a`` is more accurate than ``b`` at no larger size and no higher latency."""
    return a["drop"] < b["drop"] and a["size_bytes"] <= b["size_bytes"] and a["latency_ms"] <= b["latency_ms"]
