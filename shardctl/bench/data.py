"""Benchmark data: the ticks a run sends, what the database must hold afterwards, and the check.

Throughput runs replay a file of pre-generated price events (``write_replay``):
the feed then spends almost nothing per tick, and the expected per-symbol
counts and price sums are known before the run. Rate-paced runs use the
feed's simulation with ``--sent-log``; ``expected_from_sent_log`` reads what
it really sent. ``verify`` compares the database with either: the counts must
be equal and each symbol's ``sum(price)`` equal within 1e-9 relative (sums of
doubles in a different order), or the check fails.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson
from psycopg2.extensions import connection as Connection

from shardctl.feed.catalog import Catalog, builtin_instruments
from shardctl.twelvedata.parse import FrameParser, Kind

#: Symbols the feed knows without being told (stocks, crypto, forex, metals).
BENCH_SYMBOLS: tuple[str, ...] = tuple(i.symbol for i in builtin_instruments())
_REL_TOL = 1e-9


@dataclass
class Expected:
    """Per-symbol tick counts and price sums a run's database must hold."""

    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, list[float]] = field(default_factory=dict)

    def add(self, symbol: str, price: float) -> None:
        self.counts[symbol] = self.counts.get(symbol, 0) + 1
        self.sums.setdefault(symbol, []).append(price)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def only(self, symbols: Iterable[str]) -> Expected:
        """The part of this expectation that concerns ``symbols``."""
        keep = set(symbols)
        return Expected({s: c for s, c in self.counts.items() if s in keep},
                        {s: v for s, v in self.sums.items() if s in keep})

    def price_sum(self, symbol: str) -> float:
        return math.fsum(self.sums.get(symbol, ()))


@dataclass
class Check:
    """The database check of one run: ``ok`` only if every count and price sum matches."""

    ok: bool
    expected: int
    stored: int
    problems: list[str]

    def summary(self) -> str:
        if self.ok:
            return f"ok ({self.stored} rows)"
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"FAILED: {'; '.join(self.problems[:3])}{more}"


def shard_symbols(shards: int, symbols: Sequence[str] = BENCH_SYMBOLS) -> list[list[str]]:
    """Split ``symbols`` round-robin into ``shards`` disjoint non-empty groups."""
    if not 1 <= shards <= len(symbols):
        raise ValueError(f"shards must be 1-{len(symbols)}, got {shards}")
    return [list(symbols[i::shards]) for i in range(shards)]


def write_replay(path: Path, ticks: int, symbols: Sequence[str], *, seed: int = 1,
                 ticks_per_second: int = 5000) -> Expected:
    """Write ``ticks`` price events (round-robin over ``symbols``, the feed's own format) as JSON lines.

    Timestamps are whole seconds from now, one second per ``ticks_per_second``
    events, as Twelve Data sends them. Returns what a database fed with all of
    them must hold.
    """
    catalog = Catalog(seed=seed)
    states = [catalog.state(s) for s in symbols]
    expected = Expected()
    base = int(time.time())
    with open(path, "wb") as out:
        chunk: list[bytes] = []
        for i in range(ticks):
            state = states[i % len(states)]
            data = catalog.tick(state, base + i // ticks_per_second)
            expected.add(state.instrument.symbol, float(orjson.loads(data)["price"]))
            chunk.append(data)
            if len(chunk) >= 10_000:
                out.write(b"\n".join(chunk) + b"\n")
                chunk = []
        if chunk:
            out.write(b"\n".join(chunk) + b"\n")
    return expected


def replay_rows(path: Path) -> list[tuple[Any, ...]]:
    """The rows the worker's parser makes of a replay file (the writer's column order)."""
    parser = FrameParser()
    rows = []
    for line in path.read_bytes().splitlines():
        parsed = parser.parse(line)
        if parsed.kind is Kind.PRICE and parsed.row is not None:
            rows.append(tuple(parsed.row))
    return rows


def expected_from_sent_log(path: Path) -> Expected:
    """Per-symbol counts and prices of every price event the feed logged as sent."""
    expected = Expected()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return expected
    for line in data.splitlines():
        if not line.strip():
            continue
        event = orjson.loads(line).get("event") or {}
        if event.get("event") == "price":
            expected.add(event["symbol"], float(event["price"]))
    return expected


def stored(conn: Connection, table: str = "crypto_ticks") -> dict[str, tuple[int, float]]:
    """Per-symbol (count, sum(price)) in ``table``."""
    from psycopg2 import sql

    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT symbol, count(*), sum(price) FROM {} GROUP BY symbol")
                    .format(sql.Identifier(table)))
        result = {row[0]: (int(row[1]), float(row[2] or 0.0)) for row in cur.fetchall()}
    conn.commit()
    return result


def compare(expected: Expected, found: dict[str, tuple[int, float]], *, lossy_ok: bool = False) -> Check:
    """Compare what the database holds with what was sent.

    With ``lossy_ok`` (the baseline, which drops ticks by design) fewer rows
    per symbol are accepted, but never more and never a symbol that was not
    sent; price sums are then not compared.
    """
    problems: list[str] = []
    for symbol in sorted(set(expected.counts) | set(found)):
        want = expected.counts.get(symbol, 0)
        got, got_sum = found.get(symbol, (0, 0.0))
        if got > want or (got != want and not lossy_ok):
            problems.append(f"{symbol}: {got} rows stored, {want} sent")
            continue
        if not lossy_ok:
            want_sum = expected.price_sum(symbol)
            if not math.isclose(got_sum, want_sum, rel_tol=_REL_TOL, abs_tol=1e-6):
                problems.append(f"{symbol}: sum(price) {got_sum!r} stored, {want_sum!r} sent")
    stored_total = sum(c for c, _ in found.values())
    return Check(not problems, expected.total, stored_total, problems)
