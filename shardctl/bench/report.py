"""Presenting benchmark results: progress on stderr, the table, results.json/.csv and the charts.

Every shardctl figure is also shown as a ratio to the tutorial baseline and
to the limit (the lower of the COPY limit at that batch size and the
socket's receive-only rate). A run whose database check failed shows FAILED
and no throughput, and no ratio.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import psutil

from shardctl import __version__
from shardctl.bench.runs import RunResult
from shardctl.db.connection import scalar

CSV_FIELDS = ("system", "kind", "batch_size", "shards", "rate", "sent", "stored", "ok", "check", "rows_per_s",
              "seconds", "commits", "p50_ms", "p95_ms", "p99_ms", "max_ms", "process_cpu", "postgres_cpu",
              "peak_rss_mb", "dropped", "vs_baseline", "vs_limit", "notes")


class Progress:
    """One updating line on a TTY; on a pipe, a plain line at most every ``every`` seconds per label."""

    def __init__(self, stream: TextIO = sys.stderr, every: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every
        self._last_plain = 0.0
        self._width = 0

    def __call__(self, text: str) -> None:
        if self.tty:
            line = text[:150]
            self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
            self._width = len(line)
            self.stream.flush()
        elif time.monotonic() - self._last_plain >= self.every:
            self._last_plain = time.monotonic()
            print(text, file=self.stream, flush=True)

    def line(self, text: str) -> None:
        """A line that stays (run started/finished)."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        print(text, file=self.stream, flush=True)
        self._last_plain = time.monotonic()


def machine_info(dsn: str | None) -> dict[str, Any]:
    """Cores, memory, CPU model, Python, shardctl and (if reachable) PostgreSQL version and settings."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": platform.node(), "cpu_model": model, "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "os": platform.platform(),
        "python": platform.python_version(), "shardctl": __version__,
    }
    if dsn:
        import psycopg2

        try:
            conn = psycopg2.connect(dsn)
            with conn.cursor() as cur:
                info["postgresql"] = scalar(cur, "SHOW server_version")
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
                row = cur.fetchone()
                available = scalar(cur, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
                info["flavour"] = f"timescaledb {row[0]}" if row else (
                    "postgresql (timescaledb available)" if available else "postgresql")
                settings = {}
                for name in ("shared_buffers", "fsync", "synchronous_commit", "wal_level", "max_wal_size"):
                    settings[name] = scalar(cur, f"SHOW {name}")
                info["postgresql_settings"] = settings
            conn.close()
        except psycopg2.Error as exc:
            info["postgresql"] = f"unknown ({str(exc).strip().splitlines()[0]})"
    return info


def _ratio(value: float | None, ref: float | None) -> float | None:
    return None if value is None or not ref else value / ref


def add_ratios(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Rows for the table and files: each result with p50..max flattened and ``vs_baseline``/``vs_limit``."""
    def find(system: str, kind: str, batch: int | None = None, notes: str | None = None) -> RunResult | None:
        for r in results:
            if r.system == system and r.kind == kind and (batch is None or r.batch_size == batch) and (
                    notes is None or r.notes == notes):
                return r
        return None

    socket = find("socket-limit", "throughput", notes="framereader")
    rows = []
    for r in results:
        row = r.as_dict()
        row.pop("rss_series", None)
        lat = r.latency_ms or {}
        row.update(p50_ms=lat.get("p50"), p95_ms=lat.get("p95"), p99_ms=lat.get("p99"), max_ms=lat.get("max"))
        row["vs_baseline"] = row["vs_limit"] = None
        if r.system == "shardctl" and r.kind == "throughput" and r.ok:
            base = find("baseline", "throughput")
            copy = find("copy-limit", "throughput", r.batch_size)
            limits = [x.rows_per_s for x in (copy, socket) if x is not None and x.rows_per_s]
            row["vs_baseline"] = _ratio(r.rows_per_s, base.rows_per_s if base else None)
            row["vs_limit"] = _ratio(r.rows_per_s, min(limits) if limits else None)
        elif r.system == "shardctl" and r.kind == "latency" and r.ok and r.latency_ms:
            base = find("baseline", "latency")
            if base and base.latency_ms:
                row["vs_baseline"] = _ratio(lat.get("p99"), base.latency_ms.get("p99"))
        rows.append(row)
    return rows


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned plain-text table, one line per run."""
    head = ("system", "run", "batch", "K", "sent", "stored", "rows/s", "×base", "×limit", "p50 ms", "p99 ms",
            "max ms", "commits", "cpu%", "pg cpu%", "rss MB", "check")
    lines = []
    for r in rows:
        rate = "FAILED" if not r["ok"] and r["system"] == "shardctl" else _fmt(r["rows_per_s"])
        run = r["kind"] + (f"@{r['rate']:g}/s" if r["rate"] else "") + (
            f" ({r['notes']})" if r["system"] == "socket-limit" else "")
        lines.append((r["system"], run, _fmt(r["batch_size"]),
                      _fmt(r["shards"]), _fmt(r["sent"]), _fmt(r["stored"]), rate,
                      _fmt(r["vs_baseline"], ".2f"), _fmt(r["vs_limit"], ".2f"), _fmt(r["p50_ms"], ".1f"),
                      _fmt(r["p99_ms"], ".1f"), _fmt(r["max_ms"], ".1f"), _fmt(r["commits"]),
                      _fmt(r["process_cpu"], ".0f"), _fmt(r["postgres_cpu"], ".0f"),
                      _fmt(r["peak_rss_mb"], ".1f"), r["check"]))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    right = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines])


def write_files(out: Path, rows: Sequence[dict[str, Any]], results: Sequence[RunResult], meta: dict[str, Any],
                *, chart: bool = True) -> list[str]:
    """Write results.json, results.csv, chart.html (plotly, offline) and, with matplotlib, chart.png.

    Returns notes for the user saying where each chart is (or why the PNG is missing).
    """
    out.mkdir(parents=True, exist_ok=True)
    soak = [{"batch_size": r.batch_size, "rss_series": r.rss_series} for r in results if r.rss_series]
    (out / "results.json").write_text(json.dumps({**meta, "runs": rows, "soak": soak}, indent=2, default=str)
                                      + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    notes = []
    if chart:
        from shardctl.bench.chart import write_html_chart

        notes.append(write_html_chart(out / "chart.html", rows, title=f"shardctl bench {meta.get('date', '')}"))
        notes.append(write_chart(out / "chart.png", rows))
    return notes


def write_chart(path: Path, rows: Sequence[dict[str, Any]]) -> str:
    """Throughput and p99 latency per batch size, baseline and limits as lines; a note on what happened."""
    try:
        import logging

        import matplotlib

        matplotlib.use("Agg")
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart.png skipped: matplotlib is not installed (pip install 'shardctl[bench]'); chart.html has it all"
    thr = [r for r in rows if r["system"] == "shardctl" and r["kind"] == "throughput"]
    lat = [r for r in rows if r["system"] == "shardctl" and r["kind"] == "latency"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [str(r["batch_size"]) for r in thr]
    ax1.bar(labels, [r["rows_per_s"] or 0 for r in thr], color="#3b7dd8", label="shardctl (pgcopy)")
    for r in thr:
        if not r["ok"]:
            ax1.annotate("FAILED", (str(r["batch_size"]), 0), ha="center", va="bottom", color="red")
    copy = [r for r in rows if r["system"] == "copy-limit"]
    if copy:
        ax1.plot([str(r["batch_size"]) for r in copy], [r["rows_per_s"] or 0 for r in copy], "k^--",
                 label="limit: COPY only")
    styles = {"baseline": ("#d9534f", "baseline: tutorial (execute_values, 100/commit)"),
              "socket-limit": ("#5cb85c", "limit: socket receive-only")}
    for system, (color, label) in styles.items():
        ref = next((r for r in rows if r["system"] == system and r["kind"] == "throughput" and r["rows_per_s"]
                    and (system != "socket-limit" or r["notes"] == "framereader")), None)
        if ref:
            ax1.axhline(ref["rows_per_s"], color=color, linestyle=":", label=label)
    for r in thr:
        if r["rows_per_s"]:
            ax1.annotate(f"{r['rows_per_s']:,.0f}", (str(r["batch_size"]), r["rows_per_s"]), ha="center",
                         va="bottom", fontsize=8)
    ax1.set_yscale("log")
    ax1.set(title="Throughput (first tick → last commit), log scale", xlabel="batch size", ylabel="rows/s")
    ax1.legend(fontsize=7)
    ax2.bar([str(r["batch_size"]) for r in lat], [r["p99_ms"] or 0 for r in lat], color="#f0ad4e",
            label="shardctl p99")
    for r in lat:
        if r["p99_ms"]:
            ax2.annotate(f"{r['p99_ms']:,.0f} ms", (str(r["batch_size"]), r["p99_ms"]), ha="center", va="bottom",
                         fontsize=8)
    base = next((r for r in rows if r["system"] == "baseline" and r["kind"] == "latency" and r["p99_ms"]), None)
    if base:
        ax2.axhline(base["p99_ms"], color="#d9534f", linestyle=":", label="baseline p99")
    rate = lat[0]["rate"] if lat else None
    ax2.set(title=f"p99 receive→commit latency at {rate or 0:g} ticks/s", xlabel="batch size", ylabel="ms")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"


def soak_summary(series: Sequence[tuple[float, float]], warmup: float) -> dict[str, Any]:
    """RSS growth after warm-up: the median of the first and last minute (or fifth) after ``warmup`` s."""
    after = [(t, v) for t, v in series if t >= warmup]
    if len(after) < 4:
        return {"ok": None, "note": "too short to judge"}
    span = after[-1][0] - after[0][0]
    window = min(60.0, span / 5) or 1.0
    first = sorted(v for t, v in after if t <= after[0][0] + window)
    last = sorted(v for t, v in after if t >= after[-1][0] - window)
    start, end = first[len(first) // 2], last[len(last) // 2]
    growth = (end - start) / start * 100.0
    return {"ok": growth <= 5.0, "rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1),
            "growth_pct": round(growth, 2), "peak_mb": round(max(v for _, v in series), 1),
            "duration_s": round(series[-1][0], 1), "warmup_s": warmup}
