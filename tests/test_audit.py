"""``shardctl audit``: the calendar, the classification rules (pure), and the command on a real database."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg2
import pytest

from shardctl.audit.classify import (
    MinuteClass,
    RestBar,
    SymbolFacts,
    TickMinute,
    classify_symbol,
    collecting_minutes,
    gap_minutes,
)
from shardctl.audit.cli import parse_window
from shardctl.db.gaps import ensure_gap_tables, record_gap, upsert_bars
from shardctl.markethours import parse_market_hours

NY = ZoneInfo("America/New_York")
T, C, OFF, B, G, Q, U = (MinuteClass.TICKS, MinuteClass.CLOSED, MinuteClass.OFF, MinuteClass.BACKFILLED,
                       MinuteClass.GAP, MinuteClass.QUIET, MinuteClass.UNEXPLAINED)


def minute(year: int, month: int, day: int, hour: int, mins: int, zone: ZoneInfo = NY) -> int:
    return int(datetime(year, month, day, hour, mins, tzinfo=zone).timestamp() // 60)


# ---------------------------------------------------------------- the calendar

@pytest.mark.parametrize("when, is_open", [
    ((2026, 11, 27, 16, 59), True),    # Friday, one minute before the forex weekend
    ((2026, 11, 27, 17, 0), False),    # Friday 17:00 New York: closed
    ((2026, 11, 28, 12, 0), False),    # Saturday
    ((2026, 11, 29, 16, 59), False),   # Sunday before the open
    ((2026, 11, 29, 17, 0), True),     # Sunday 17:00: open again
    ((2026, 7, 3, 16, 59), True),      # summer time: still 17:00 New York
    ((2026, 7, 3, 17, 0), False),
])
def test_forex_weekend_is_friday_to_sunday_17_00_new_york(when: tuple[int, ...], is_open: bool) -> None:
    t = datetime(*when, tzinfo=NY).timestamp()
    assert parse_market_hours("forex").is_open(t) is is_open


def test_sessions_by_mic_name_or_custom_and_auto_is_unknown() -> None:
    friday = datetime(2026, 11, 27, 12, 0, tzinfo=NY).timestamp()
    saturday = friday + 86400
    assert parse_market_hours("NYSE").name == "XNYS"
    assert parse_market_hours("XNYS").is_open(friday) and not parse_market_hours("XNYS").is_open(saturday)
    assert not parse_market_hours("XNYS").is_open(datetime(2026, 11, 27, 16, 0, tzinfo=NY).timestamp())
    london = parse_market_hours("XLON")
    assert london.is_open(datetime(2026, 11, 27, 8, 0, tzinfo=ZoneInfo("Europe/London")).timestamp())
    custom = parse_market_hours("America/New_York 09:30-16:45")
    assert custom.is_open(datetime(2026, 11, 27, 16, 44, tzinfo=NY).timestamp())
    assert not custom.is_open(datetime(2026, 11, 27, 16, 45, tzinfo=NY).timestamp())
    assert parse_market_hours("24/7").is_open(saturday) is True
    assert parse_market_hours("auto").is_open(saturday) is None
    with pytest.raises(ValueError, match="unknown market hours 'weekdays'"):
        parse_market_hours("weekdays")
    with pytest.raises(ValueError, match="unknown market hours"):
        parse_market_hours("America/New_York 16:00-09:30")


def test_open_minutes_agrees_with_is_open_minute_by_minute() -> None:
    first = minute(2026, 11, 27, 15, 50)
    for name in ("forex", "XNYS", "America/New_York 09:30-16:45", "24/7"):
        hours = parse_market_hours(name)
        flags = hours.open_minutes(first, first + 90)
        assert flags == [hours.is_open(m * 60) for m in range(first, first + 91)], name


# ---------------------------------------------------------------- the rules

def facts(n: int = 10, **kw: object) -> SymbolFacts:
    base: dict[str, object] = dict(symbol="S", shard="sh", first=100, last=100 + n - 1, ticks={},
                                   backfilled=frozenset(), gaps=frozenset(), market_open=[True] * n,
                                   collecting=[True] * n)
    base.update(kw)
    return SymbolFacts(**base)  # type: ignore[arg-type]


def test_rules_in_order() -> None:
    tick = TickMinute(1.0, Decimal(10))
    f = facts(ticks={100: tick, 105: tick}, market_open=[True] * 5 + [False] * 3 + [True] * 2,
              backfilled=frozenset({101, 109}), gaps=frozenset({101, 102, 108}))
    assert classify_symbol(f).classes == (T, B, G, U, U, T, C, C, G, B)
    off = facts(n=4, collecting=[False, False, True, True], market_open=[True, False, True, True])
    assert classify_symbol(off).classes == (OFF, C, U, U)


def test_collecting_minutes_from_stretches_else_from_the_first_tick() -> None:
    # No stretch recorded: collecting from the first tick on.
    assert collecting_minutes([], 102, 100, 104) == [False, False, True, True, True]
    assert collecting_minutes([], None, 100, 101) == [False, False]
    # Stopped on purpose at minute 102 (mid-minute: that minute still counts), started again at 104.
    stretches = [(100 * 60.0, 102 * 60 + 30.0), (104 * 60.0, None)]
    assert collecting_minutes(stretches, 100, 100, 105) == [True, True, True, False, True, True]
    # Before the first stretch (a database older than the record): the first tick decides.
    assert collecting_minutes([(103 * 60.0, None)], 101, 100, 104) == [False, True, True, True, True]


def test_rest_turns_no_tick_minutes_into_quiet_or_unexplained_and_compares_closes() -> None:
    ticks = {100: TickMinute(10.0, Decimal(100)), 101: TickMinute(11.0, Decimal(150))}
    rest = {100: RestBar(10.0, Decimal(5)), 101: RestBar(11.5, Decimal(50)), 102: RestBar(1.0, Decimal(0)),
            104: RestBar(1.0, Decimal(7)), 105: RestBar(1.0, None)}
    f = facts(n=7, ticks=ticks, rest=rest, rest_asked=frozenset(range(100, 106)))
    audit = classify_symbol(f)
    # 102 zero volume, 103 no bar: quiet; 104 traded; 105 forex-like bar (no volume) traded; 106 not asked
    assert audit.classes == (T, T, Q, Q, U, U, U)
    assert (audit.quality.compared, audit.quality.close_mismatches) == (2, 1)
    assert (audit.quality.volume_compared, audit.quality.volume_mismatches) == (1, 0)
    assert audit.longest_unexplained == (104, 3)
    assert audit.completeness == pytest.approx(100 * 2 / 5)


def test_gap_minutes_are_the_minutes_a_span_overlaps() -> None:
    assert gap_minutes([(6000.5, 6061.0)], 99, 110) == frozenset({100, 101})
    assert gap_minutes([(6000.0, 6060.0)], 99, 110) == frozenset({100})
    assert gap_minutes([(0.0, 10**9)], 99, 101) == frozenset({99, 100, 101})


def test_window_flags() -> None:
    now = datetime(2026, 12, 4, 10, 30, 29, tzinfo=timezone.utc).timestamp()
    first, last = parse_window(None, None, None, now)
    assert (last - first + 1, (last + 1) * 60) == (1440, int(now // 60) * 60)
    assert parse_window(None, "2026-12-04T09:00", "2026-12-04T09:10Z", now) == (
        int(datetime(2026, 12, 4, 9, tzinfo=timezone.utc).timestamp() // 60),
        int(datetime(2026, 12, 4, 9, 9, tzinfo=timezone.utc).timestamp() // 60))
    from shardctl.errors import UsageError
    with pytest.raises(UsageError, match="--since or --from"):
        parse_window("1h", "2026-12-04T09:00", None, now)
    with pytest.raises(UsageError, match="empty"):
        parse_window(None, "2026-12-04T09:00", "2026-12-04T09:00", now)


# ---------------------------------------------------------------- the command on a real database

def _config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[database]\ndsn = "{dsn}"\n'
                    '[source]\nurl = "ws://127.0.0.1:9/v1/quotes/price"\n'
                    '[shards.crypto]\nsymbols = ["BTC/USD", "ETH/USD"]\nmarket_hours = "24/7"\n'
                    '[shards.stocks]\nsymbols = ["AAPL"]\nmarket_hours = "XNGS"\n')
    return path


def _audit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardctl", "audit", str(config), *args], capture_output=True,
                          text=True, timeout=60)


def test_audit_command_classifies_what_the_database_holds(tmp_path: Path, schema_dsn: str) -> None:
    # Friday 2026-11-27, 15:50-16:10 New York: AAPL's session ends at 16:00.
    t0 = datetime(2026, 11, 27, 15, 50, tzinfo=NY)
    m0 = int(t0.timestamp() // 60)
    rows = []
    for i in range(20):
        at = t0 + timedelta(minutes=i, seconds=30)
        if i >= 2 and i not in (7, 8, 9, 12):          # BTC: starts at minute 2; 7-9 in a gap, 12 unexplained
            rows.append((at, "BTC/USD", 100.0 + i, Decimal(1000 + i)))
        if i not in (4, 5):                             # ETH: 4 and 5 backfilled
            rows.append((at, "ETH/USD", 10.0 + i, Decimal(500 + i)))
        if i < 10 and i != 3:                           # AAPL: 3 unexplained, closed from 16:00
            rows.append((at, "AAPL", 190.0, Decimal(7)))
    conn = psycopg2.connect(schema_dsn)
    with conn, conn.cursor() as cur:
        cur.executemany('INSERT INTO crypto_ticks ("time", symbol, price, day_volume) VALUES (%s, %s, %s, %s)', rows)
    ensure_gap_tables(conn)
    record_gap(conn, "crypto", t0 + timedelta(minutes=6, seconds=45), t0 + timedelta(minutes=10), "disconnected")
    upsert_bars(conn, [("ETH/USD", t0 + timedelta(minutes=i), 1.0, 1.0, 1.0, 1.0, Decimal(3)) for i in (4, 5)])
    conn.close()

    config = _config(tmp_path, schema_dsn)
    window = ("--from", t0.isoformat(), "--to", (t0 + timedelta(minutes=20)).isoformat())
    done = _audit(config, *window, "--format", "json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    by = {s["symbol"]: s for s in report["symbols"]}
    assert by["BTC/USD"]["minutes"] == "oo" + "t" * 5 + "ggg" + "tt" + "u" + "t" * 7
    assert by["ETH/USD"]["minutes"] == "tttt" + "bb" + "t" * 14
    assert by["AAPL"]["minutes"] == "ttt" + "u" + "t" * 6 + "c" * 10
    assert report["unexplained"] == 2 and report["minutes"] == 20
    assert by["BTC/USD"]["counts"]["gap"] == 3 and by["BTC/USD"]["longest_unexplained"]["minutes"] == 1
    assert by["ETH/USD"]["completeness"] == 100.0

    text = _audit(config, *window, "--symbol", "ETH/USD")
    assert text.returncode == 0, text.stderr
    assert "every minute explained" in text.stdout and "BTC/USD" not in text.stdout
    assert "market_hours" not in text.stderr  # every shard has a calendar

    auto = tmp_path / "auto.toml"
    auto.write_text(config.read_text().replace('market_hours = "XNGS"', 'market_hours = "auto"'))
    noted = _audit(auto, *window, "--symbol", "ETH/USD")
    assert noted.returncode == 0
    assert 'note: stocks: market_hours = "auto" has no calendar for the past' in noted.stderr
    assert str(auto) in noted.stderr and "crypto" not in noted.stderr

    out = tmp_path / "audit.html"
    page = _audit(config, *window, "--format", "html", "--out", str(out))
    assert page.returncode == 1 and "2 unexplained" in page.stderr
    assert "<canvas" in out.read_text() and '"BTC/USD"' in out.read_text()

    bad = _audit(config, "--symbol", "NOPE")
    assert bad.returncode == 2 and "NOPE: not in" in bad.stderr
    assert m0 > 0


# ---------------------------------------------------------------- the supervisor's [audit] schedule

def test_audit_config_section_is_checked(tmp_path: Path) -> None:
    from shardctl.config import check_config

    path = tmp_path / "c.toml"
    path.write_text('[source]\nurl = "ws://127.0.0.1:9/v1/quotes/price"\n[audit]\ninterval = "soon"\nonline = 1\n'
                    'windw = "1d"\n[shards.s]\nsymbols = ["A"]\n')
    _, problems, _ = check_config(path)
    assert sorted(p.key for p in problems) == ["audit.interval", "audit.online", "audit.windw"], problems
    path.write_text('[source]\nurl = "ws://127.0.0.1:9/v1/quotes/price"\n[audit]\ninterval = "15m"\n'
                    '[shards.s]\nsymbols = ["A"]\n')
    config, problems, _ = check_config(path)
    assert not problems and config is not None and config.audit is not None
    assert (config.audit.interval, config.audit.window, config.audit.online) == (900.0, 86400.0, False)


def test_a_scheduled_audit_that_fails_unexpectedly_is_recorded_and_the_schedule_goes_on(caplog) -> None:
    from shardctl.config.model import AuditConfig, Config
    from shardctl.supervisor.audits import AuditSchedule

    def broken_config() -> Config:
        raise KeyError("no such symbol")

    schedule = AuditSchedule(broken_config, AuditConfig(), "postgresql://127.0.0.1:9/none", None)
    last = schedule.run_once()
    assert last.report is None and last.error == "KeyError: 'no such symbol'"
    assert "audit failed unexpectedly" in caplog.text


@pytest.mark.slow
def test_supervisor_runs_the_audit_on_schedule_and_shows_its_counts_in_metrics(tmp_path: Path,
                                                                              schema_dsn: str) -> None:
    from support import terminate_all, wait_until
    from test_statuspage import http
    from test_supervisor import CRYPTO, Supervisor, free_port, write_config

    from shardctl.feed.server import FeedServer

    with FeedServer(rate=40, symbols=CRYPTO, seed=3) as feed:
        port = free_port()
        config = write_config(tmp_path, feed.url, schema_dsn, metrics_port=port, shards={"crypto": CRYPTO},
                              shard_settings={"crypto": {"market_hours": "24/7"}})
        config.write_text(config.read_text() + '[audit]\ninterval = "1s"\nwindow = "5m"\n')
        sup = Supervisor(config, tmp_path / "supervisor.log")
        try:
            sup.wait_states("RUNNING")

            def audited() -> str | None:
                body = http(port, "/metrics")[2].decode()
                return body if "shardctl_audit_minutes{" in body else None

            body = wait_until(audited, 30, what="an audit's counts in /metrics")
        finally:
            terminate_all([sup.proc])
            sup.close()
    assert "shardctl_audit_failed 0.0" in body, (tmp_path / "supervisor.log").read_text()[-3000:]
    # The last five whole minutes of each symbol (the current minute is not whole yet: not audited).
    found = re.finditer(r'shardctl_audit_minutes\{class="(\w+)"\} (\S+)', body)
    counts = {m.group(1): float(m.group(2)) for m in found}
    assert sum(counts.values()) == 5 * len(CRYPTO) and len(counts) == 7, counts
    assert re.search(r"shardctl_audit_last_run_timestamp_seconds \d", body)
    assert "audit of the last 5 minute(s) x " in (tmp_path / "supervisor.log").read_text()


@pytest.mark.slow
def test_the_supervisor_records_what_it_collects_and_a_stop_on_purpose_is_off(tmp_path: Path,
                                                                             schema_dsn: str) -> None:
    from support import query, terminate_all, wait_until
    from test_supervisor import CRYPTO, STOCKS, Supervisor, run_cli, write_config

    from shardctl.feed.server import FeedServer

    with FeedServer(rate=40, symbols=STOCKS + CRYPTO, seed=4) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn)
        sup = Supervisor(config, tmp_path / "supervisor.log")
        try:
            sup.wait_states("RUNNING")
            wait_until(lambda: len(query(schema_dsn, "SELECT 1 FROM shardctl_collection WHERE stopped_at IS NULL"))
                       == len(STOCKS + CRYPTO), 20, what="a stretch per symbol")
            stopped = run_cli("stop", str(config), "crypto")
            assert stopped.returncode == 0, stopped.stderr
            rows = query(schema_dsn, "SELECT symbol, stop_reason FROM shardctl_collection WHERE shard = 'crypto'")
            assert sorted(rows) == sorted((s, "stopped by operator") for s in CRYPTO), rows
            started = run_cli("shard", "start", str(config), "crypto")
            assert started.returncode == 0, started.stderr
            wait_until(lambda: len(query(schema_dsn, "SELECT 1 FROM shardctl_collection WHERE shard = 'crypto' "
                                                     "AND stopped_at IS NULL")) == len(CRYPTO), 20,
                       what="crypto's stretches open again")
        finally:
            terminate_all([sup.proc])
            sup.close()
    rows = query(schema_dsn, "SELECT shard, count(*) FILTER (WHERE stopped_at IS NULL), "
                             "count(*) FILTER (WHERE stop_reason = 'supervisor stopping') FROM shardctl_collection "
                             "GROUP BY shard ORDER BY shard")
    assert rows == [("crypto", 0, len(CRYPTO)), ("stocks", 0, len(STOCKS))], rows
    # The audit: crypto's stop on purpose is off, not unexplained (its stretches say so).
    stretches = query(schema_dsn, "SELECT extract(epoch FROM min(stopped_at)), extract(epoch FROM max(started_at)) "
                                  "FROM shardctl_collection WHERE shard = 'crypto'")
    stop_at, restart_at = (float(v) for v in stretches[0])
    assert restart_at > stop_at
    first, last = int(stop_at // 60) - 1, int(restart_at // 60) + 1
    done = _audit(config, "--from", datetime.fromtimestamp(first * 60, timezone.utc).isoformat(),
                  "--to", datetime.fromtimestamp((last + 1) * 60, timezone.utc).isoformat(),
                  "--symbol", CRYPTO[0], "--format", "json")
    minutes = json.loads(done.stdout)["symbols"][0]["minutes"]
    assert "u" not in minutes, minutes  # every minute ticks, or off while stopped (minutes shorter than a stop)


def test_stretches_before_the_window_still_say_the_symbol_was_recorded(schema_dsn: str) -> None:
    from shardctl.db.collection import collection_stretches, reconcile_collection
    from shardctl.db.connection import connect

    conn = connect(schema_dsn)
    t0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    try:
        reconcile_collection(conn, {"crypto": ["BTC/USD", "ETH/USD"]}, ["crypto"], t0, "started")
        assert reconcile_collection(conn, {"crypto": ["BTC/USD", "ETH/USD"]}, ["crypto"], t0, "again") == (0, 0)
        assert reconcile_collection(conn, {"crypto": ["ETH/USD"]}, ["crypto"], t0 + timedelta(hours=1),
                                    "removed by reload") == (0, 1)
        lo, hi = t0 + timedelta(hours=2), t0 + timedelta(hours=3)
        stretches = collection_stretches(conn, ["BTC/USD", "ETH/USD", "SOL/USD"], lo, hi)
    finally:
        conn.close()
    assert stretches["BTC/USD"] == [(t0.timestamp(), t0.timestamp() + 3600)]  # before the window: off in it
    assert stretches["ETH/USD"] == [(t0.timestamp(), None)]
    assert stretches["SOL/USD"] == []
    first = int(lo.timestamp() // 60)
    assert collecting_minutes(stretches["BTC/USD"], first - 200, first, first + 2) == [False] * 3
    assert collecting_minutes(stretches["ETH/USD"], first - 200, first, first + 2) == [True] * 3
