"""What a search shows: the Pareto front as a table, a PNG plot (matplotlib) and an
interactive offline HTML chart (plotly, its JavaScript inlined), written atomically.

Both charts plot every measured candidate as latency against task-metric drop, the marker
size growing with the artifact size; the front is highlighted and labelled.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..ir.io import atomic_write_bytes
from ..ir.table import format_table, human_bytes

log = logging.getLogger(__name__)


def front_table(front: Sequence[Mapping[str, Any]], metric: str, reference_score: float | None = None) -> str:
    """One row per front member: recipe, task metric and its drop, latency, size, pipeline."""
    rows = []
    for c in sorted(front, key=lambda c: (c["drop"], c["latency_ms"], c["size_bytes"])):
        rows.append([c["key"], c["label"], f"{c['score']:.4f}", f"{c['drop']:+.4f}", f"{c['latency_ms']:.3f} ms",
                     human_bytes(c["size_bytes"]), c["pipeline"]])
    title = f"Pareto front ({len(front)} candidate(s)): {metric}"
    if reference_score is not None:
        title += f" of the float model {reference_score:.4f}"
    return title + "\n" + format_table(["key", "recipe", metric, "drop", "latency", "size", "pipeline"], rows,
                                       align="llrrrrl")


def _points(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in candidates if c.get("status") == "ok"]


def write_png(path: Path, candidates: Sequence[Mapping[str, Any]], front_keys: set[str], metric: str) -> bool:
    """Plot with matplotlib (Agg); False (and a warning) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no front.png (pip install 'presso[search]')")
        return False
    points = _points(candidates)
    sizes = [c["size_bytes"] for c in points] or [1]
    biggest = max(sizes)
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=110)
    for on_front in (False, True):
        chosen = [c for c in points if (c["key"] in front_keys) == on_front]
        if not chosen:
            continue
        axes.scatter([c["latency_ms"] for c in chosen], [c["drop"] for c in chosen],
                     s=[30 + 300 * c["size_bytes"] / biggest for c in chosen],
                     c="tab:red" if on_front else "tab:gray", alpha=0.85 if on_front else 0.45,
                     edgecolors="black" if on_front else "none", label="Pareto front" if on_front else "other candidates")
    for c in points:
        if c["key"] in front_keys:
            axes.annotate(c["label"], (c["latency_ms"], c["drop"]), fontsize=7, xytext=(4, 4),
                          textcoords="offset points")
    axes.set_xlabel("latency (ms, median, 1 thread)")
    axes.set_ylabel(f"{metric} drop against the float model (lower is better)")
    axes.set_title("presso search: candidates (marker area ∝ artifact size)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")  # labels of the right-most points included
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def write_html(path: Path, candidates: Sequence[Mapping[str, Any]], front_keys: set[str], metric: str) -> bool:
    """An interactive chart with plotly's JavaScript inlined (opens offline); False when
    plotly is missing."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        log.warning("plotly is not installed: no front.html (pip install 'presso[report]')")
        return False
    points = _points(candidates)
    biggest = max([c["size_bytes"] for c in points] or [1])
    figure = go.Figure()
    for on_front in (False, True):
        chosen = [c for c in points if (c["key"] in front_keys) == on_front]
        if not chosen:
            continue
        figure.add_trace(go.Scatter(
            x=[c["latency_ms"] for c in chosen], y=[c["drop"] for c in chosen], mode="markers",
            name="Pareto front" if on_front else "other candidates",
            marker={"size": [8 + 30 * c["size_bytes"] / biggest for c in chosen],
                    "color": "crimson" if on_front else "gray", "opacity": 0.85 if on_front else 0.5},
            text=[f"{c['label']}<br>{metric} {c['score']:.4f} (drop {c['drop']:+.4f})<br>"
                  f"{c['latency_ms']:.3f} ms · {human_bytes(c['size_bytes'])}<br>{c['pipeline']}" for c in chosen],
            hoverinfo="text"))
    figure.update_layout(title="presso search: candidates (marker size ∝ artifact size)",
                         xaxis_title="latency (ms, median, 1 thread)",
                         yaxis_title=f"{metric} drop against the float model (lower is better)")
    atomic_write_bytes(path, figure.to_html(include_plotlyjs=True, full_html=True).encode())
    return True
