"""The audit report as text (a terminal), JSON (machines) and HTML (a heatmap for people, offline).

JSON shape: ``{"from", "to", "minutes", "online", "totals": {class: n}, "unexplained",
"symbols": [{"symbol", "shard", "completeness", "counts": {class: n}, "longest_unexplained":
{"from", "minutes"} | null, "quality": {...}, "minutes": "ttcco..."}], "legend": {letter: class}, ...}``:
``minutes`` holds one letter per minute from ``from`` (``LETTERS``).
The HTML page has no external resource: one canvas, symbols × minutes, one
colour per class, and the minute's facts on hover.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any

import orjson

from shardctl.audit.classify import MinuteClass, SymbolAudit
from shardctl.audit.run import AuditReport, minute_stamp

__all__ = ["LETTERS", "COLOURS", "render_text", "render_json", "render_html", "report_dict"]

LETTERS = {MinuteClass.TICKS: "t", MinuteClass.BACKFILLED: "b", MinuteClass.CLOSED: "c", MinuteClass.OFF: "o",
           MinuteClass.GAP: "g", MinuteClass.QUIET: "q", MinuteClass.UNEXPLAINED: "u"}
COLOURS = {MinuteClass.TICKS: "#2e9d4f", MinuteClass.BACKFILLED: "#7cc6e8", MinuteClass.CLOSED: "#c9ccd1",
           MinuteClass.OFF: "#eeeeee", MinuteClass.GAP: "#f0a030", MinuteClass.QUIET: "#f3e29a",
           MinuteClass.UNEXPLAINED: "#d6332f"}


def _iso(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, timezone.utc).isoformat()


def _symbol_dict(audit: SymbolAudit) -> dict[str, Any]:
    longest = audit.longest_unexplained
    q = audit.quality
    return {"symbol": audit.symbol, "shard": audit.shard, "completeness": audit.completeness,
            "counts": {c.value: n for c, n in audit.counts.items()},
            "longest_unexplained": None if longest is None else {"from": _iso(longest[0]), "minutes": longest[1]},
            "quality": {"compared": q.compared, "close_mismatches": q.close_mismatches,
                        "volume_compared": q.volume_compared, "volume_mismatches": q.volume_mismatches},
            "minutes": "".join(LETTERS[c] for c in audit.classes)}


def report_dict(report: AuditReport) -> dict[str, Any]:
    """The JSON shape (see the module docstring)."""
    return {"from": _iso(report.first), "to": _iso(report.last + 1), "minutes": report.minutes,
            "online": report.online, "totals": {c.value: n for c, n in report.totals.items()},
            "unexplained": report.unexplained, "legend": {v: k.value for k, v in LETTERS.items()},
            "symbols": [_symbol_dict(a) for a in report.symbols],
            "read": {"from_candles": report.from_candles, "probes": report.probes, "seconds": report.seconds,
                     "rest_requests": report.rest_requests, "rest_errors": list(report.rest_errors)}}


def render_json(report: AuditReport) -> str:
    return orjson.dumps(report_dict(report), option=orjson.OPT_INDENT_2).decode() + "\n"


def render_text(report: AuditReport) -> str:
    """An aligned table, one row per symbol, the unexplained stretches named, then totals."""
    header = ("SYMBOL", "SHARD", "COMPLETE", *(c.value for c in MinuteClass), "LONGEST UNEXPLAINED")
    rows = [header]
    for a in report.symbols:
        longest = a.longest_unexplained
        complete = "-" if a.completeness is None else f"{a.completeness:.1f}%"
        rows.append((a.symbol, a.shard, complete, *(str(a.counts[c]) for c in MinuteClass),
                     "-" if longest is None else f"{longest[1]}m from {minute_stamp(longest[0])}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"audit {minute_stamp(report.first)} to {minute_stamp(report.last + 1)} UTC: {report.minutes} minute(s) "
             f"x {len(report.symbols)} symbol(s){', online' if report.online else ''}"]
    lines += ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
              .rstrip() for r in rows]
    totals = report.totals
    lines.append("total: " + ", ".join(f"{c.value} {totals[c]}" for c in MinuteClass))
    if report.online:
        compared = sum(a.quality.compared for a in report.symbols)
        close = sum(a.quality.close_mismatches for a in report.symbols)
        vol_n = sum(a.quality.volume_compared for a in report.symbols)
        vol = sum(a.quality.volume_mismatches for a in report.symbols)
        lines.append(f"quality: {compared} minute(s) compared with REST: {close} close and {vol} of {vol_n} volume "
                     f"discrepancies; {report.rest_requests} REST request(s)")
        lines += [f"rest error: {e}" for e in report.rest_errors]
    verdict = ("every minute explained" if not report.unexplained else
               f"{report.unexplained} unexplained minute(s): market open, no tick, no recorded gap")
    lines.append(verdict)
    return "\n".join(lines) + "\n"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shardctl audit {title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 16px; color: #222; }}
#legend span {{ display: inline-block; margin-right: 14px; }}
#legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }}
#wrap {{ display: flex; margin-top: 10px; }}
#names div {{ height: {row}px; line-height: {row}px; font: 12px monospace; padding-right: 8px; white-space: nowrap; }}
#tip {{ position: fixed; background: #222; color: #fff; padding: 4px 8px; border-radius: 4px; font: 12px monospace;
        pointer-events: none; display: none; }}
table {{ border-collapse: collapse; margin-top: 14px; }} td, th {{ padding: 2px 8px; text-align: right; }}
</style></head><body>
<h1>Audit {title}</h1>
<p id="summary">{summary}</p>
<div id="legend">{legend}</div>
<div id="wrap"><div id="names">{names}</div><canvas id="map" width="{width}" height="{height}"></canvas></div>
<div id="tip"></div>
<table id="counts"><tr><th>symbol</th><th>complete</th>{heads}</tr>{table}</table>
<script id="data" type="application/json">{data}</script>
<script>
const d = JSON.parse(document.getElementById("data").textContent);
const colours = d.colours, cell = d.cell, row = d.row;
const c = document.getElementById("map"), g = c.getContext("2d");
d.symbols.forEach((s, y) => {{
  for (let x = 0; x < s.minutes.length; x++) {{
    g.fillStyle = colours[s.minutes[x]]; g.fillRect(x * cell, y * row, cell, row - 1);
  }}
}});
document.body.dataset.rendered = String(d.symbols.length);
const tip = document.getElementById("tip");
c.addEventListener("mousemove", e => {{
  const r = c.getBoundingClientRect();
  const x = Math.floor((e.clientX - r.left) / cell), y = Math.floor((e.clientY - r.top) / row);
  const s = d.symbols[y];
  if (!s || x < 0 || x >= s.minutes.length) {{ tip.style.display = "none"; return; }}
  const t = new Date((d.first + x) * 60000).toISOString().slice(0, 16).replace("T", " ");
  tip.textContent = s.symbol + " (" + s.shard + ") " + t + " UTC: " + d.legend[s.minutes[x]];
  tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px"; tip.style.display = "block";
}});
c.addEventListener("mouseleave", () => {{ tip.style.display = "none"; }});
</script></body></html>
"""


def render_html(report: AuditReport) -> str:
    """A self-contained page: the heatmap (symbols × minutes), a legend, per-symbol counts; hover names a minute."""
    cell = max(1, min(8, 1600 // max(report.minutes, 1)))
    row = 16
    data = {"first": report.first, "cell": cell, "row": row, "legend": {v: k.value for k, v in LETTERS.items()},
            "colours": {LETTERS[k]: v for k, v in COLOURS.items()},
            "symbols": [{"symbol": a.symbol, "shard": a.shard, "minutes": "".join(LETTERS[c] for c in a.classes)}
                        for a in report.symbols]}
    title = f"{minute_stamp(report.first)} to {minute_stamp(report.last + 1)} UTC"
    totals = report.totals
    summary = (f"{report.minutes} minute(s) × {len(report.symbols)} symbol(s){', REST asked' if report.online else ''}"
               f": " + ", ".join(f"{c.value} {totals[c]}" for c in MinuteClass))
    legend = "".join(f'<span class="cls-{c.value}"><i style="background:{COLOURS[c]}"></i>{c.value}</span>'
                     for c in MinuteClass)
    names = "".join(f"<div>{html.escape(a.symbol)}</div>" for a in report.symbols)
    heads = "".join(f"<th>{c.value}</th>" for c in MinuteClass)
    table = "".join(
        f"<tr><td>{html.escape(a.symbol)}</td><td>{'-' if a.completeness is None else f'{a.completeness:.1f}%'}"
        f"</td>{''.join(f'<td>{a.counts[c]}</td>' for c in MinuteClass)}</tr>" for a in report.symbols)
    payload = orjson.dumps(data).decode().replace("</", "<\\/")
    return _PAGE.format(title=html.escape(title), summary=html.escape(summary), legend=legend, names=names,
                        width=max(report.minutes, 1) * cell, height=max(len(report.symbols), 1) * row, row=row,
                        heads=heads, table=table, data=payload)
