"""``shardctl bench``: measure shardctl against the tutorial's ingester and against the limits.

For each batch size: a throughput run (the feed replays ``--ticks`` events as
fast as the workers read), the COPY limit at that batch size, and a latency
run at ``--rate`` ticks/s; then the tutorial baseline (throughput and
latency), the socket's receive-only rate, and optionally a soak run and a
profiled run. Runs are described in ``shardctl.bench.runs``; every run's
rows are checked in the database and a failed check means FAILED, no
throughput, and exit status 1.

The database: ``--dsn``, else the config's ``database.dsn``/``dsn_env``, else
a private embedded PostgreSQL in a scratch directory, stopped at the end if
this command started it. Each run uses a fresh database on that server.
Results: a table on stdout (progress on stderr), and ``results.json``,
``results.csv``, ``chart.html`` (plotly, offline) and, with matplotlib, ``chart.png`` in ``--out``;
see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from shardctl.bench import data as bench_data
from shardctl.bench import report as bench_report
from shardctl.bench import runs as bench_runs
from shardctl.bench.runs import BenchContext, RunResult
from shardctl.db.connection import scalar
from shardctl.errors import EXIT_OK, EXIT_RUNTIME, UsageError

DEFAULT_TICKS = 200_000
DEFAULT_RATE = 5000.0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shardctl bench`` to the CLI."""
    p = subparsers.add_parser("bench", help="benchmark batch sizes against the tutorial baseline and the limits",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("config", nargs="?", help="optional TOML config: its database and flush_interval are used")
    p.add_argument("--ticks", type=int, default=DEFAULT_TICKS, help=f"ticks per throughput run ({DEFAULT_TICKS:,})")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="ticks/s of latency runs, all shards (5000)")
    p.add_argument("--batch-sizes", default="100,1000,10000", help="comma-separated (100,1000,10000)")
    p.add_argument("--shards", type=int, default=1, help="workers in parallel, each with its own symbols (1)")
    p.add_argument("--dsn", help="benchmark on this server (needs CREATEDB); default: private embedded server")
    p.add_argument("--out", help="results directory (default benchmarks/results/<date>-<host>)")
    p.add_argument("--flush-interval", default=None, help="worker flush_interval (default: config's, or 1s)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of each latency run (10)")
    p.add_argument("--soak", metavar="DURATION", help="also one long run at --rate measuring RSS, e.g. 10m")
    p.add_argument("--profile", action="store_true", help="also profile one worker at max throughput")
    p.add_argument("--skip-baseline", action="store_true", help="leave out the tutorial baseline runs")
    p.add_argument("--direct-compress", choices=("on", "off"), default="on",
                   help="TimescaleDB: workers and the COPY limit write with direct compress on (default, as "
                        "[timescaledb] direct_compress) or off")
    p.add_argument("--storage", action="store_true",
                   help="also measure the ticks table's size after the replay, before and after the columnstore "
                        "policy (at each batch size)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the scratch directory (logs, configs)")
    p.set_defaults(func=cmd_bench)


def _options(args: argparse.Namespace) -> tuple[list[int], float, float | None]:
    from shardctl.config.model import parse_duration

    try:
        sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes wants integers like 100,1000,10000, got {args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError("--batch-sizes needs at least one size of 1 or more")
    if args.ticks < 1 or args.rate <= 0:
        raise UsageError("--ticks and --rate must be positive")
    if not 1 <= args.shards <= len(bench_data.BENCH_SYMBOLS):
        raise UsageError(f"--shards must be 1-{len(bench_data.BENCH_SYMBOLS)}")
    try:
        flush = parse_duration(args.flush_interval) if args.flush_interval else None
        soak = parse_duration(args.soak) if args.soak else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return sizes, flush or 0.0, soak


def _server(args: argparse.Namespace, workdir: Path) -> tuple[str, int | None, Any, float | None]:
    """(admin DSN, postmaster pid if visible, embedded server we started or None, config flush_interval)."""
    from shardctl.db.embedded import EmbeddedPostgres

    flush = None
    dsn = args.dsn
    if args.config:
        from shardctl.config import load_config
        from shardctl.db.connection import resolve_target

        config = load_config(args.config)
        flush = config.defaults.flush_interval
        if dsn is None and not config.database.embedded:
            dsn = resolve_target(config).dsn
    if dsn is not None:
        return dsn, _postmaster_pid(dsn), None, flush
    server = EmbeddedPostgres(workdir / "pg")
    dsn, started = server.ensure_running()
    return dsn, server.pid(), server if started else None, flush


def _postmaster_pid(dsn: str) -> int | None:
    """The server's postmaster pid when it runs on this machine and is visible, else None (no PG CPU figures)."""
    import psutil
    import psycopg2

    try:
        conn = psycopg2.connect(dsn, connect_timeout=5)
        with conn.cursor() as cur:
            backend = scalar(cur, "SELECT pg_backend_pid()")
        parent = psutil.Process(backend).parent()
        conn.close()
        return parent.pid if parent is not None and "postgres" in parent.name() else None
    except (psycopg2.Error, psutil.Error):
        return None


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 0 when every shardctl run passed its database check, else 1."""
    sizes, flush_arg, soak = _options(args)
    out = Path(args.out) if args.out else Path("benchmarks/results") / (
        f"{datetime.date.today():%Y-%m-%d}-{platform.node() or 'host'}")
    workdir = Path(tempfile.mkdtemp(prefix="shardctl-bench-"))
    progress = bench_report.Progress()
    embedded = None
    try:
        dsn, pg_pid, embedded, config_flush = _server(args, workdir)
        flush = flush_arg or config_flush or 1.0
        progress.line(f"shardctl bench: {args.ticks:,} ticks, batch sizes {sizes}, {args.shards} shard(s), "
                      f"latency at {args.rate:g}/s, flush_interval {flush:g}s; scratch {workdir}")
        replay = workdir / "replay.jsonl"
        expected = bench_data.write_replay(replay, args.ticks, bench_data.BENCH_SYMBOLS)
        ctx = BenchContext(dsn, pg_pid, workdir, replay, expected, flush_interval=flush, progress=progress,
                           direct_compress=args.direct_compress == "on")
        results, extra = _run_all(ctx, args, sizes, soak, progress)
        rows = bench_report.add_ratios(results)
        meta: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {**bench_report.machine_info(dsn), **_flavour(ctx)},
            "settings": {"ticks": args.ticks, "rate": args.rate, "batch_sizes": sizes, "shards": args.shards,
                         "flush_interval": flush, "latency_seconds": args.latency_seconds,
                         "direct_compress": args.direct_compress,
                         "database": "private embedded PostgreSQL" if embedded else "given server",
                         "throughput_definition": "rows stored / (first tick received -> last commit)"},
            **extra,
        }
        notes = bench_report.write_files(out, rows, results, meta)
    finally:
        if embedded is not None:
            embedded.stop()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    progress.line("")
    print(bench_report.format_table(rows))
    for key in ("soak", "profile", "storage"):
        if key in extra:
            print(f"\n{key}: {_describe(key, extra[key])}")
    for note in notes + [f"results in {out}/ (results.json, results.csv)"]:
        print(note, file=sys.stderr)
    failed = [r for r in results if r.system == "shardctl" and not r.ok]
    if failed:
        print(f"shardctl bench: {len(failed)} run(s) FAILED the database check: "
              + "; ".join(f"{r.label}: {r.check}" for r in failed), file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def _flavour(ctx: BenchContext) -> dict[str, str]:
    """The flavour the runs' own databases had (the admin database may lack the extension)."""
    if ctx.flavour != "timescaledb":
        return {}
    import psycopg2

    conn = psycopg2.connect(ctx.admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
            row = cur.fetchone()
    finally:
        conn.close()
    return {"flavour": f"timescaledb {row[0] if row else '?'} (in each run's database)"}


def _describe(key: str, value: dict[str, Any]) -> str:
    if key == "storage":
        from shardctl.bench.storage import describe

        return "".join(f"\n  {describe(v)}" for v in value["runs"])
    if key == "soak":
        return ", ".join(f"{k}={v}" for k, v in value.items())
    lines = []
    for thread, top in value.get("threads", {}).items():
        lines.append(f"[{thread}] top functions by own time:")
        lines += [f"  {r['share'] * 100:5.1f}%  {r['tottime_s']:7.3f}s  {r['calls']:>9}  {r['function']}"
                  for r in top[:12]]
    return "\n".join([value.get("note", "")] + lines + ["per-tick cost by stage:", value.get("breakdown", "")])


def _run(progress: bench_report.Progress, fn: Any, *args: Any, **kw: Any) -> RunResult:
    result: RunResult = fn(*args, **kw)
    rate = "FAILED" if not result.ok else (f"{result.rows_per_s:,.0f} rows/s" if result.rows_per_s else "")
    lat = f" p99 {result.latency_ms['p99']:.1f} ms" if result.latency_ms else ""
    progress.line(f"done: {result.label}: {rate}{lat} [{result.check}]")
    return result


def _run_all(ctx: BenchContext, args: argparse.Namespace, sizes: list[int], soak: float | None,
             progress: bench_report.Progress) -> tuple[list[RunResult], dict[str, Any]]:
    k = args.shards
    lat_ticks = max(k, int(min(args.ticks, args.rate * args.latency_seconds)) // k * k)
    results = [_run(progress, bench_runs.run_socket_limit, ctx),
               _run(progress, bench_runs.run_socket_limit, ctx, reader="websocket-client")]
    for size in sizes:
        results.append(_run(progress, bench_runs.run_shardctl, ctx, "throughput", size, k, args.ticks, None))
        results.append(_run(progress, bench_runs.run_copy_limit, ctx, size))
        results.append(_run(progress, bench_runs.run_shardctl, ctx, "latency", size, k, lat_ticks, args.rate))
    if not args.skip_baseline:
        results.append(_run(progress, bench_runs.run_baseline, ctx, "throughput", args.ticks, None))
        results.append(_run(progress, bench_runs.run_baseline, ctx, "latency", lat_ticks, args.rate))
    extra: dict[str, Any] = {}
    if soak:
        size = max(sizes)
        run = _run(progress, bench_runs.run_shardctl, ctx, "soak", size, 1, int(args.rate * soak), args.rate)
        results.append(run)
        extra["soak"] = {"batch_size": size, "rate": args.rate,
                         **bench_report.soak_summary(run.rss_series or [], min(60.0, soak / 5))}
    if args.profile:
        size = max(sizes)
        measured = next((r for r in results if r.system == "shardctl" and r.kind == "throughput"
                         and r.batch_size == size and r.ok), None)
        extra["profile"] = _profile(ctx, size, args.ticks, progress, measured)
    if args.storage:
        from shardctl.bench.storage import run_storage

        extra["storage"] = {"runs": [run_storage(ctx, size) for size in sizes]}
        progress.line(f"done: storage: {_describe('storage', extra['storage'])}")
    return results, extra


def _profile(ctx: BenchContext, size: int, ticks: int, progress: bench_report.Progress,
             throughput: RunResult | None) -> dict[str, Any]:
    from shardctl.bench.profile import top_functions
    from shardctl.bench.stages import breakdown, format_breakdown, replay_frames

    prefix = ctx.workdir / "profile"
    run = _run(progress, bench_runs.run_shardctl, ctx, "profile", size, 1, ticks, None, profile=prefix)
    threads = {p.name.split(".")[-2]: top_functions(p, 20) for p in sorted(ctx.workdir.glob("profile.s0.*.prof"))}
    note = (f"worker under cProfile (all threads) at max throughput, batch {size}: "
            f"{run.rows_per_s or 0:,.0f} rows/s with profiling overhead; share = of that thread's own time")
    stages = breakdown(replay_frames(ctx.replay, min(ticks, 100_000)), size)
    worker_ns = None
    if throughput is not None and throughput.process_cpu and throughput.seconds and throughput.stored:
        worker_ns = throughput.process_cpu / 100 * throughput.seconds / throughput.stored * 1e9
    table = format_breakdown(stages, worker_ns)
    progress.line(f"per-tick cost by stage (this process, CPU time; batch {size}):\n{table}")
    return {"note": note, "rows_per_s": run.rows_per_s, "threads": threads, "breakdown": table,
            "stages_ns_per_tick": {s.name: round(s.ns_per_tick) for s in stages}, "worker_ns_per_tick": worker_ns}
