"""The bench chart as an offline HTML page, drawn with plotly (a dependency of shardctl).

``write_html_chart(path, rows)`` promises ``path`` (e.g. ``chart.html``) and
``plotly.min.js`` beside it: the JavaScript the ``plotly`` package ships
(the same file the status page serves), so the page opens without network
and several result directories never share one copy. Two panels, as the
PNG has: throughput per batch size (log scale) with the tutorial baseline
and the limits as lines, and p99 receive→commit latency per batch size with
the baseline's p99. A run whose database check failed shows FAILED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["PLOTLY_JS", "write_html_chart"]

#: The file written beside the chart; the page loads it with a relative <script src>.
PLOTLY_JS = "plotly.min.js"


def _reference(rows: Sequence[dict[str, Any]], system: str, kind: str, field: str) -> float | None:
    for r in rows:
        if r["system"] == system and r["kind"] == kind and r.get(field) and (
                system != "socket-limit" or r.get("notes") == "framereader"):
            return float(r[field])
    return None


def write_html_chart(path: Path, rows: Sequence[dict[str, Any]], *, title: str = "shardctl bench") -> str:
    """Write the chart page and ``plotly.min.js`` beside it; return a note saying where they are."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    thr = [r for r in rows if r["system"] == "shardctl" and r["kind"] == "throughput"]
    lat = [r for r in rows if r["system"] == "shardctl" and r["kind"] == "latency"]
    rate = lat[0]["rate"] if lat else 0
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Throughput (first tick → last commit), rows/s, log scale",
        f"p99 receive→commit latency at {rate or 0:g} ticks/s, ms"))
    fig.add_trace(go.Bar(x=[str(r["batch_size"]) for r in thr], y=[r["rows_per_s"] or 0 for r in thr],
                         name="shardctl (pgcopy)", marker_color="#3b7dd8",
                         text=[f"{r['rows_per_s']:,.0f}" if r["ok"] and r["rows_per_s"] else "FAILED" for r in thr],
                         textposition="outside"), row=1, col=1)
    copy = [r for r in rows if r["system"] == "copy-limit" and r.get("rows_per_s")]
    if copy:
        fig.add_trace(go.Scatter(x=[str(r["batch_size"]) for r in copy], y=[r["rows_per_s"] for r in copy],
                                 mode="lines+markers", name="limit: COPY only", line={"dash": "dash",
                                                                                     "color": "black"}),
                      row=1, col=1)
    lines = (("baseline", "#d9534f", "baseline: tutorial (execute_values, 100/commit)"),
             ("socket-limit", "#5cb85c", "limit: socket receive-only"))
    for system, color, label in lines:
        value = _reference(rows, system, "throughput", "rows_per_s")
        if value:
            fig.add_trace(go.Scatter(x=[str(r["batch_size"]) for r in thr], y=[value] * len(thr), mode="lines",
                                     name=label, line={"dash": "dot", "color": color}), row=1, col=1)
    fig.add_trace(go.Bar(x=[str(r["batch_size"]) for r in lat], y=[r["p99_ms"] or 0 for r in lat],
                         name="shardctl p99", marker_color="#f0ad4e",
                         text=[f"{r['p99_ms']:,.0f} ms" if r["p99_ms"] else "-" for r in lat],
                         textposition="outside"), row=1, col=2)
    base_p99 = _reference(rows, "baseline", "latency", "p99_ms")
    if base_p99:
        fig.add_trace(go.Scatter(x=[str(r["batch_size"]) for r in lat], y=[base_p99] * len(lat), mode="lines",
                                 name="baseline p99", line={"dash": "dot", "color": "#d9534f"}), row=1, col=2)
    fig.update_yaxes(type="log", title_text="rows/s", row=1, col=1)
    fig.update_yaxes(title_text="ms", row=1, col=2)
    fig.update_xaxes(title_text="batch size", type="category")
    fig.update_layout(title=title, height=480, legend={"orientation": "h", "y": -0.2})
    path.parent.mkdir(parents=True, exist_ok=True)
    # include_plotlyjs="directory": a <script src="plotly.min.js"> and, if missing, the package's copy beside it.
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return f"chart written to {path} (offline: {PLOTLY_JS} beside it)"
