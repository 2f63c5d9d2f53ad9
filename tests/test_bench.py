"""``shardctl bench``: a tiny real run end to end, and a run whose database check fails."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from shardctl.bench import data as bench_data
from shardctl.bench import report as bench_report
from shardctl.bench import runs as bench_runs
from shardctl.bench.monitor import percentiles


@pytest.mark.slow
def test_bench_small_run_writes_parseable_results_with_matching_counts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardctl", "bench", "--ticks", "5000", "--batch-sizes", "100,1000",
           "--rate", "2000", "--latency-seconds", "1", "--out", str(out)]
    if os.environ.get("SHARDCTL_TEST_DSN"):
        cmd += ["--dsn", os.environ["SHARDCTL_TEST_DSN"]]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rows/s" in proc.stdout and "shardctl" in proc.stdout  # the table

    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["cores"] and results["machine"]["postgresql"]
    runs = results["runs"]
    ours = [r for r in runs if r["system"] == "shardctl"]
    assert {(r["kind"], r["batch_size"]) for r in ours} == {
        ("throughput", 100), ("throughput", 1000), ("latency", 100), ("latency", 1000)}
    for run in ours:
        assert run["ok"] and run["check"].startswith("ok"), run
        assert run["stored"] == run["sent"] == (5000 if run["kind"] == "throughput" else 2000)
        assert run["latency_ms"]["p99"] >= run["latency_ms"]["p50"] > 0
        assert run["commits"] >= 1 and run["peak_rss_mb"] > 0
        assert (run["rows_per_s"] or 0) > 0 if run["kind"] == "throughput" else run["rows_per_s"] is None
    assert {r["system"] for r in runs} >= {"baseline", "copy-limit", "socket-limit"}
    baseline = next(r for r in runs if r["system"] == "baseline" and r["kind"] == "throughput")
    assert baseline["stored"] + baseline["dropped"] == baseline["sent"] == 5000

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(runs)
    assert all(row["stored"] == row["sent"] for row in rows if row["system"] == "shardctl")
    if importlib.util.find_spec("matplotlib"):
        assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    # The HTML chart comes from every run, offline: plotly.js beside it, no CDN.
    page = (out / "chart.html").read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in page and "cdn." not in page
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert f"chart written to {out / 'chart.html'}" in proc.stderr


def _drop_aapl_rows(dsn: str) -> None:
    """A real trigger that silently discards one symbol's rows: the database check must notice."""
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE FUNCTION drop_aapl() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.symbol = 'AAPL' THEN RETURN NULL; END IF; RETURN NEW; END $$")
        cur.execute("CREATE TRIGGER drop_aapl BEFORE INSERT ON crypto_ticks "
                    "FOR EACH ROW EXECUTE FUNCTION drop_aapl()")
    conn.close()


@pytest.mark.slow
def test_a_run_whose_rows_do_not_match_reports_failed_and_no_throughput(tmp_path: Path, pg_server) -> None:
    replay = tmp_path / "replay.jsonl"
    expected = bench_data.write_replay(replay, 620, bench_data.BENCH_SYMBOLS)
    ctx = bench_runs.BenchContext(pg_server.dsn, None, tmp_path, replay, expected, flush_interval=0.2,
                                  stall_timeout=10)
    result = bench_runs.run_shardctl(ctx, "throughput", 100, 1, 620, None, prepare_db=_drop_aapl_rows)

    assert result.sent == 620 and result.stored == 620 - expected.counts["AAPL"]
    assert not result.ok and result.rows_per_s is None
    assert result.check.startswith("FAILED") and "AAPL" in result.check
    table = bench_report.format_table(bench_report.add_ratios([result]))
    assert "FAILED" in table.splitlines()[-1]


def test_html_chart_shows_every_batch_size_and_a_failed_run(tmp_path: Path) -> None:
    from shardctl.bench.chart import write_html_chart

    results = json.loads((Path(__file__).parents[1] / "benchmarks/results/2026-11-21-vm/results.json").read_text())
    rows = results["runs"]
    failed = next(r for r in rows if r["system"] == "shardctl" and r["kind"] == "throughput")
    failed.update(ok=False, rows_per_s=None)
    note = write_html_chart(tmp_path / "chart.html", rows)
    page = (tmp_path / "chart.html").read_text()
    assert note.startswith(f"chart written to {tmp_path / 'chart.html'}") and "FAILED" in page
    assert "baseline: tutorial" in page and "limit: COPY only" in page and "shardctl p99" in page
    assert (tmp_path / "plotly.min.js").exists()


def test_compare_and_percentiles() -> None:
    expected = bench_data.Expected()
    for price in (1.5, 2.25, 3.0):
        expected.add("AAPL", price)
    assert bench_data.compare(expected, {"AAPL": (3, 6.75)}).ok
    assert not bench_data.compare(expected, {"AAPL": (3, 6.76)}).ok           # a changed price
    assert not bench_data.compare(expected, {"AAPL": (3, 6.75), "X": (1, 1.0)}).ok  # a row never sent
    assert bench_data.compare(expected, {"AAPL": (2, 4.0)}, lossy_ok=True).ok   # baseline: fewer is allowed
    assert percentiles([float(i) for i in range(1, 101)]) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) is None


def test_the_stage_breakdown_times_every_stage_on_the_replay(tmp_path: Path) -> None:
    from shardctl.bench.stages import breakdown, format_breakdown, replay_frames

    replay = tmp_path / "replay.jsonl"
    bench_data.write_replay(replay, 3000, bench_data.BENCH_SYMBOLS)
    stages = breakdown(replay_frames(replay, 3000), 1000, repeat=1)
    assert [s.name for s in stages] == ["socket read + frame cutting", "masking", "journal append", "parse",
                                        "freshness", "batching", "encoding"]
    assert all(s.ns_per_tick > 0 for s in stages)
    table = format_breakdown(stages, worker_ns=sum(s.ns_per_tick for s in stages) + 100)
    assert "worker loop and the rest" in table and "100 ns/tick" in table
