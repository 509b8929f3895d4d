"""Draw the collected report as one self-contained HTML file: plotly charts, plain tables.

plotly.js is inlined once (about 4.8 MB, from the plotly wheel), so the file opens offline and
nothing is fetched. Every chart is a ``div.presso-chart`` drawn by ``Plotly.newPlot`` (SVG, not
WebGL, so it renders in a headless browser without a GPU too).
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from ..ir.errors import PressoError
from ..ir.table import human_bytes

PRECISION_COLORS = {
    "a8w8": "#1f77b4", "a16w8": "#ff7f0e", "a8w4": "#9467bd", "a4w4": "#8c564b", "w8": "#2ca02c",
    "w4": "#17becf", "a8": "#aec7e8", "a16": "#ffbb78", "float": "#9e9e9e", "input": "#333333",
    "output": "#333333",
}
_EXTRA_COLORS = ("#d62728", "#e377c2", "#bcbd22", "#7f7f7f", "#98df8a", "#c5b0d5")
_EXACT_DB = 100.0  # where an exact layer (no error at all) is drawn on the SQNR axis


def require_plotly():
    """plotly's figure API, its JSON writer and its bundled JavaScript; a PressoError with the
    extra to install when the `report` extra is missing."""
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise PressoError("the HTML report needs plotly", hint="install the report extra: pip install 'presso[report]'") from None
    return go, pio, get_plotlyjs


def color_of(precision: str, seen: dict[str, str]) -> str:
    if precision in PRECISION_COLORS:
        return PRECISION_COLORS[precision]
    if precision not in seen:
        seen[precision] = _EXTRA_COLORS[len(seen) % len(_EXTRA_COLORS)]
    return seen[precision]


def render(report: dict[str, Any]) -> str:
    """The whole HTML document for a :func:`presso.report.collect` dict."""
    go, pio, get_plotlyjs = require_plotly()
    colors: dict[str, str] = {}  # precisions beyond PRECISION_COLORS, one colour each
    config = {"displaylogo": False, "responsive": True}

    def chart(chart_id: str, title: str, figure: Any, extra: str = "") -> str:
        # The figure as JSON inside a script: "</" is escaped so that no layer name can end the element.
        spec = pio.to_json(figure, validate=False).replace("</", "<\\/")
        div = (f'<div id="chart-{chart_id}" style="height:{figure.layout.height or 450}px; width:100%;"></div>'
               f'<script type="text/javascript">(function () {{ var spec = {spec}; '
               f'Plotly.newPlot("chart-{chart_id}", spec.data, spec.layout, {json.dumps(config)}); }})();</script>')
        return (f'<section><h2>{html.escape(title)}</h2><div class="presso-chart" data-chart="{chart_id}">'
                f"{div}</div>{extra}</section>")

    sections = [_summary_section(report),
                chart("size-latency", "Size and latency, before and after", _size_latency_figure(go, report)),
                _pipeline_section(report)]
    if any(row["sqnr_db"] is not None or row["exact"] for row in report["layers"]):
        sections.append(chart("sqnr", "Per-layer error (SQNR of each layer's output against the model before)",
                              _sqnr_figure(go, report, colors),
                              '<p class="note">bars: the compressed model; red marks: the same model with its Q/DQ '
                              "pairs undone but its weights still rounded, so the gap between a bar and its mark is "
                              "what rounding the activations costs</p>"))
    else:
        sections.append("<section><h2>Per-layer error</h2><p class=\"note\">not measured: no layer output of the "
                        "compressed model has a counterpart in the model before (see the notes)</p></section>")
    if report.get("sensitivity"):
        sections.append(chart("sensitivity", "Sensitivity per layer", _sensitivity_figure(go, report),
                              _sensitivity_note(report.get("sensitivity_info"))))
    else:
        sections.append("<section><h2>Sensitivity per layer</h2><p class=\"note\">not computed: pass "
                        "<code>--sensitivity</code> (or <code>sensitivity=True</code> in Python) to measure each "
                        "layer's effect on the task metric</p></section>")
    if report["layers"]:
        sections.append(chart("precision", "Precision chosen per layer", _precision_figure(go, report, colors),
                              _layers_table(report)))
    if report.get("graph"):
        sections.append(chart("graph", "Graph (Q/DQ collapsed)", _graph_figure(go, report, colors),
                              '<p class="note">drag to pan, scroll or box to zoom, double-click to see the whole '
                              "graph; hover a node for its name, op, precision and SQNR</p>"))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("notes", []))
    if notes:
        sections.append(f"<section><h2>Notes</h2><ul>{notes}</ul></section>")
    return _PAGE.format(title=html.escape(report["title"]), plotlyjs=get_plotlyjs(), css=_CSS,
                        created=html.escape(report["created"]), body="\n".join(sections),
                        data=embedded_json(report))


def embedded_json(report: dict[str, Any]) -> str:
    """The report's numbers (without the drawing coordinates) as JSON that is safe inside a
    ``<script>`` element: non-finite numbers become null, and ``</`` cannot close the element."""
    numbers = finite({k: v for k, v in report.items() if k != "graph"})
    return json.dumps(numbers, allow_nan=False, default=str).replace("</", "<\\/")


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# ---- figures ---------------------------------------------------------------------------------
def _sqnr_figure(go, report, colors):
    rows = report["layers"]
    order = [r["name"] for r in rows]
    fig = go.Figure()
    by_precision: dict[str, list[dict]] = {}
    for row in rows:
        if row["sqnr_db"] is not None or row["exact"]:
            by_precision.setdefault(row["precision"], []).append(row)
    for precision, members in by_precision.items():
        fig.add_trace(go.Bar(
            x=[r["name"] for r in members],
            y=[_EXACT_DB if r["exact"] else r["sqnr_db"] for r in members],
            name=precision, marker_color=color_of(precision, colors),
            customdata=[[r["op"], "exact" if r["exact"] else f"{r['sqnr_db']:.1f} dB", _cos(r["cosine"])]
                        for r in members],
            hovertemplate="%{x} (%{customdata[0]})<br>SQNR %{customdata[1]}<br>cosine %{customdata[2]}"
                          "<extra>%{fullData.name}</extra>"))
    weights_only = [r for r in rows if r.get("sqnr_weights_only_db") is not None]
    if weights_only:
        fig.add_trace(go.Scatter(
            x=[r["name"] for r in weights_only], y=[min(r["sqnr_weights_only_db"], _EXACT_DB) for r in weights_only],
            mode="markers", name="weights rounded only", marker=dict(symbol="line-ew-open", size=12, color="#d62728"),
            hovertemplate="%{x}<br>weights rounded only: %{y:.1f} dB<extra></extra>"))
    fig.update_layout(height=420, margin=dict(l=60, r=20, t=20, b=40), barmode="overlay", bargap=0.15,
                      yaxis_title="SQNR (dB, higher is better)", legend_title_text="precision",
                      xaxis=dict(categoryorder="array", categoryarray=order, showticklabels=len(order) <= 60,
                                 tickvals=order, ticktext=[_short_name(n) for n in order],
                                 title=f"{len(order)} layers in graph order"))
    return fig


def _short_name(name: str, width: int = 28) -> str:
    """A tick label: exported names are long paths whose end tells layers apart."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _cos(value):
    return "-" if value is None else f"{value:.6f}"


def _precision_figure(go, report, colors):
    counts: dict[str, int] = {}
    for row in report["layers"]:
        counts[row["precision"]] = counts.get(row["precision"], 0) + 1
    labels = list(counts)
    fig = go.Figure(go.Bar(x=labels, y=[counts[k] for k in labels], text=[counts[k] for k in labels],
                           marker_color=[color_of(k, colors) for k in labels],
                           hovertemplate="%{x}: %{y} layers<extra></extra>"))
    fig.update_layout(height=300, margin=dict(l=60, r=20, t=20, b=40), yaxis_title="layers",
                      xaxis_title="precision (aN: N-bit activations, wN: N-bit weights; w8 alone: int8 weights "
                                  "with float activations, mixed-precision's a16w8 on CPUs)")
    return fig


_SENSITIVITY_NAMES = {
    "only_quantized_drop": "only this layer int8: metric drop",
    "only_float_drop": "all int8 but this layer: metric drop",
    "only_quantized_sqnr": "only this layer int8: output SQNR",
    "only_float_sqnr": "all int8 but this layer: output SQNR",
}


def _sensitivity_figure(go, report):
    """Metric drops on top, output SQNRs (dB) below, per layer; any other measure on top."""
    from plotly.subplots import make_subplots

    rows = report["sensitivity"]
    measures = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "layer"
                and any(r.get(k) is not None for r in rows) and "outlier" not in k]
    in_db = [m for m in measures if "sqnr" in m.lower()]
    other = [m for m in measures if m not in in_db]
    panels = [p for p in (other, in_db) if p]
    info = report.get("sensitivity_info") or {}
    metric = info.get("metric", "metric")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    names = [r["layer"] for r in rows]
    for row_index, panel in enumerate(panels, 1):
        for measure in panel:
            label = _SENSITIVITY_NAMES.get(measure, measure).replace("metric", metric)
            fig.add_trace(go.Bar(x=names, y=[r.get(measure) for r in rows], name=label,
                                 hovertemplate="%{x}: %{y:.4g}<extra>" + html.escape(label) + "</extra>"),
                          row=row_index, col=1)
        fig.update_yaxes(title_text="dB" if panel is in_db else f"{metric} drop", row=row_index, col=1)
    fig.update_layout(height=260 + 200 * len(panels), margin=dict(l=60, r=20, t=20, b=40), barmode="group")
    fig.update_xaxes(showticklabels=len(rows) <= 60, tickvals=names, ticktext=[_short_name(n) for n in names],
                     row=len(panels), col=1)
    return fig


def _size_latency_figure(go, report):
    from plotly.subplots import make_subplots

    bench = report["bench"]
    models = bench["models"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("file size (MB)", "latency, median (ms)"))
    colors = {"before": "#9e9e9e", "after": "#1f77b4"}
    for model in models:
        name = model["name"]
        fig.add_trace(go.Bar(x=[name], y=[model["size_bytes"] / 2**20], name=name, legendgroup=name,
                             marker_color=colors.get(name), text=[human_bytes(model["size_bytes"])],
                             hovertemplate="%{x}: %{text}<extra></extra>"), row=1, col=1)
        keys = list(model["latency"])
        fig.add_trace(go.Bar(x=keys, y=[model["latency"][k]["median_ms"] for k in keys], name=name,
                             legendgroup=name, showlegend=False, marker_color=colors.get(name),
                             hovertemplate="%{x}: %{y:.3f} ms<extra>" + html.escape(name) + "</extra>"),
                      row=1, col=2)
    fig.update_layout(height=360, margin=dict(l=60, r=20, t=40, b=40), barmode="group")
    return fig


def _graph_figure(go, report, colors):
    graph = report["graph"]
    xs, ys = graph["x"], graph["y"]
    edge_x, edge_y = [], []
    for s, t in graph["edges"]:
        span = xs[t] - xs[s]
        # An edge that skips columns arcs over the chain it skips (a residual, a gate), instead of
        # hiding under it; the arc stays below half a lane.
        lift = min(0.12 * span, 0.45) if span > 1 else 0.0
        edge_x += [xs[s], (xs[s] + xs[t]) / 2, xs[t], None]
        edge_y += [ys[s], (ys[s] + ys[t]) / 2 + lift, ys[t], None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=edge_x, y=edge_y, mode="lines", line=dict(width=0.8, color="#aaaaaa", shape="spline"),
                             hoverinfo="skip", showlegend=False, name="edges"))
    hover = [f"{n}<br>{op}<br>{p}" + (f"<br>SQNR {db:.1f} dB" if db is not None else "")
             for n, op, p, db in zip(graph["names"], graph["ops"], graph["precision"], graph["sqnr_db"])]
    groups: dict[str, list[int]] = {}
    for i, precision in enumerate(graph["precision"]):
        groups.setdefault(precision, []).append(i)
    for precision, members in groups.items():
        fig.add_trace(go.Scatter(
            x=[xs[i] for i in members], y=[ys[i] for i in members], mode="markers", name=precision,
            marker=dict(size=9, color=color_of(precision, colors), line=dict(width=0.5, color="#333"),
                        symbol="diamond" if precision in ("input", "output") else "circle"),
            text=[hover[i] for i in members], hovertemplate="%{text}<extra></extra>"))
    measured = [i for i, db in enumerate(graph["sqnr_db"]) if db is not None]
    precision_traces = len(groups)
    if measured:
        fig.add_trace(go.Scatter(
            x=[xs[i] for i in measured], y=[ys[i] for i in measured], mode="markers", name="SQNR (dB)",
            visible=False, text=[hover[i] for i in measured], hovertemplate="%{text}<extra></extra>",
            marker=dict(size=9, color=[graph["sqnr_db"][i] for i in measured], colorscale="Viridis",
                        showscale=True, colorbar=dict(title="SQNR dB"), line=dict(width=0.5, color="#333"))))
        by_precision = [True] + [True] * precision_traces + [False]
        by_error = [True] + [False] * precision_traces + [True]
        fig.update_layout(updatemenus=[dict(
            type="buttons", direction="right", x=0, y=1.08, xanchor="left", yanchor="bottom",
            buttons=[dict(label="colour by precision", method="restyle", args=[{"visible": by_precision}]),
                     dict(label="colour by SQNR", method="restyle", args=[{"visible": by_error}])])])
    width = max(xs, default=0) - min(xs, default=0)
    fig.update_layout(height=560, margin=dict(l=20, r=20, t=50, b=20), hovermode="closest",
                      xaxis=dict(visible=False, range=[-1, min(width, 60) + 1]),  # zoom out to see it all
                      yaxis=dict(visible=False), legend_title_text="precision", dragmode="pan")
    return fig


# ---- tables ----------------------------------------------------------------------------------
def _sensitivity_note(info) -> str:
    if not info:
        return ""
    scores = ""
    if info.get("reference_score") is not None and info.get("int8_score") is not None:
        scores = f": float {info['reference_score']:.4f}, all int8 {info['int8_score']:.4f}"
    return (f'<p class="note">the float model with only this layer in int8, and the int8 model with only this '
            f"layer in float; {html.escape(str(info.get('metric')))} on {info.get('samples', '?')} samples"
            f"{scores}</p>")


def _summary_section(report):
    bench = report["bench"]
    rows = {m["name"]: m for m in bench["models"]}
    before, after = rows.get("before"), rows.get("after")
    cells = []
    if before and after:
        cells.append(("size", f"{human_bytes(before['size_bytes'])} → {human_bytes(after['size_bytes'])}",
                      f"{after['size_ratio']:.3f}×"))
        for key, ratio in after["latency_ratio"].items():
            cells.append((f"latency ({key})", f"{before['latency'][key]['median_ms']:.3f} ms → "
                                              f"{after['latency'][key]['median_ms']:.3f} ms", f"{ratio:.3f}×"))
        agreement = after["agreement"]
        cells.append(("output cosine to before", _cos(agreement.get("cosine")), ""))
        if agreement.get("top1") is not None:
            cells.append(("top-1 agreement with before", f"{100 * agreement['top1']:.1f}%", ""))
        cells.append(("max abs difference", f"{agreement.get('max_abs', float('nan')):.4g}", ""))
    body = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in cells)
    data = report["data"]
    meta = (f"<p>before: <code>{html.escape(report['before']['name'])}</code> ({report['before']['nodes']} nodes), "
            f"after: <code>{html.escape(report['after']['name'])}</code>"
            + (f" ({report['after']['nodes']} nodes)" if report["after"]["nodes"] is not None else "")
            + f"; data: <code>{html.escape(data['source'])}</code>, {data['samples_agreement']} sample(s) for "
              f"agreement, {data['samples_error']} for per-layer error; latency from {bench['runs']} interleaved "
              "runs per model (onnxruntime, all graph optimizations)</p>")
    return f'<section><h2>Summary</h2>{meta}<table class="summary">{body}</table></section>'


def _pipeline_section(report):
    rows = report.get("pipeline")
    if rows:
        body = []
        for r in rows:
            err = r.get("error_vs_original") or r.get("error")
            error = "-" if not err else ("exact" if not err.get("max_abs") else
                                         f"SQNR {_db(err.get('sqnr_db'))}, max {err.get('max_abs', 0):.2e}")
            stats = ", ".join(f"{k}={_short(v)}" for k, v in (r.get("stats") or {}).items()
                              if not isinstance(v, (dict, list)))
            body.append(f"<tr><td><code>{html.escape(str(r['pass']))}</code></td>"
                        f"<td class=num>{1000 * r.get('seconds', 0):.0f} ms</td>"
                        f"<td class=num>{r.get('nodes_before')} → {r.get('nodes_after')}</td>"
                        f"<td>{'yes' if r.get('changed') else 'no'}</td><td>{html.escape(error)}</td>"
                        f"<td class=stats>{html.escape(stats)}</td></tr>")
        table = ("<table><tr><th>pass</th><th>time</th><th>nodes</th><th>changed</th><th>error vs input</th>"
                 "<th>what it did</th></tr>" + "".join(body) + "</table>")
        return f"<section><h2>Pipeline</h2>{table}</section>"
    history = report.get("history") or []
    if not history:
        return "<section><h2>Pipeline</h2><p class=\"note\">no pass history in the compressed model</p></section>"
    items = "".join(f"<li><code>{html.escape(str(h['pass']))}</code> {html.escape(_options(h.get('options')))}</li>"
                    for h in history)
    return ("<section><h2>Pipeline</h2><p class=\"note\">the passes recorded in the compressed model (no timings: "
            "run <code>presso opt --report</code> for them)</p>"
            f"<ol>{items}</ol></section>")


def _options(options) -> str:
    if not options:
        return ""
    return "{" + ",".join(f"{k}={v}" for k, v in options.items() if v not in (None, False, [], "")) + "}"


def _layers_table(report):
    rows = []
    for r in report["layers"]:
        error = "exact" if r["exact"] else (_db(r["sqnr_db"]) if r["sqnr_db"] is not None else
                                            html.escape(r["not_compared"] or "-"))
        rows.append(f"<tr><td><code>{html.escape(r['name'])}</code></td><td>{html.escape(r['op'])}</td>"
                    f"<td><b>{html.escape(r['precision'])}</b></td><td>{html.escape(r['activations'])}</td>"
                    f"<td>{html.escape(r['weights'])}</td><td class=num>{error}</td>"
                    f"<td class=num>{_db(r.get('sqnr_weights_only_db'))}</td>"
                    f"<td class=num>{_cos(r['cosine'])}</td><td>{html.escape(r['reason'] or '')}</td></tr>")
    opened = " open" if len(rows) <= 40 else ""
    return (f'<details{opened}><summary>every layer ({len(rows)})</summary><table><tr><th>layer</th><th>op</th><th>precision</th>'
            "<th>activations</th><th>weights</th><th>SQNR</th><th>SQNR, weights rounded only</th><th>cosine</th>"
            "<th>why</th></tr>"
            + "".join(rows) + "</table></details>")


def _db(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1f} dB"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; } td.stats { font-size: 12px; color: #555; }
.note { color: #666; font-size: 13px; } code { font-size: 12px; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Presso report: {title}</title>
<style>{css}</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<h1>Presso report: {title}</h1>
<p class="note">created {created} by presso report</p>
{body}
<script type="application/json" id="presso-report-data">{data}</script>
</body>
</html>
"""
