"""The reports that cross a process boundary, as types.

A worker writes JSON lines to the pipe its supervisor hands it
(``SHARDCTL_REPORT_FD``): one ``ReadyReport`` once it is subscribed, then a
``WorkerReport`` every second, which doubles as its heartbeat. The
supervisor's shard folds those into a ``ShardStatus``, which ``status``,
``/api/status``, ``/metrics`` and ``/healthz`` read. Every reader goes
through these types: a renamed field is a type error, not a silent zero.

The JSON shapes are a contract: ``WorkerReport`` lines between a worker and a
supervisor of the same version, and ``ShardStatus`` (flat, one key per field)
for the control socket and ``/api/status``. Unknown keys are ignored and
missing ones take their defaults, so a reader never fails on an older or
newer writer.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

import orjson

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _from_mapping(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from the keys of ``data`` it knows, each checked against its field's default type."""
    known: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data or not f.init:
            continue
        value, default = data[f.name], f.default
        if default is dataclasses.MISSING or default is None:  # required, or optional: the caller checks
            known[f.name] = value
        elif isinstance(value, bool) != isinstance(default, bool):
            continue
        elif isinstance(default, float) and isinstance(value, (int, float)):
            known[f.name] = float(value)
        elif isinstance(value, type(default)):
            known[f.name] = value
    return cls(**known)


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative counts of one worker process; the supervisor adds them up across restarts."""

    ticks_received: int = 0
    rows_written: int = 0
    batches: int = 0
    batch_seconds_sum: float = 0.0
    reconnects: int = 0
    dead_letters: int = 0
    dead_letters_dropped: int = 0
    journal_dropped: int = 0
    other_events: int = 0
    #: Times the database was found behind what the shard had committed (failover, restore).
    database_rollbacks: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


class Market(enum.StrEnum):
    """Market of a symbol as the worker judges it: trading, closed (never stale), always trading, or not known
    (counts as open)."""

    OPEN = "open"
    CLOSED = "closed"
    ALWAYS = "24/7"
    UNKNOWN = "unknown"


MARKET_OPEN, MARKET_CLOSED, MARKET_ALWAYS, MARKET_UNKNOWN = Market.OPEN, Market.CLOSED, Market.ALWAYS, Market.UNKNOWN


@dataclass(frozen=True, slots=True)
class SymbolFreshness:
    """One symbol's freshness: when it last ticked, how late its ticks arrive, its market, and whether it is stale.

    ``last_tick_at`` is Unix seconds (None: no tick since the worker started);
    ``delay_p50``/``delay_p99`` are seconds from the event's own timestamp
    (whole seconds, so ±1 s) to receipt, over the symbol's last ticks (None
    without ticks). ``market`` is one of the MARKET_* values; ``stale`` is
    True when the market is not closed and no tick came for ``stale_after``.
    ``rate`` is the symbol's recent tick rate and ``normal_rate`` its own
    normal (ticks per minute, None until measured); ``slow`` is True when the
    market is not closed and ``rate`` fell below ``slow_below`` × ``normal_rate``.
    """

    symbol: str
    last_tick_at: float | None = None
    delay_p50: float | None = None
    delay_p99: float | None = None
    market: Market = Market.UNKNOWN
    stale: bool = False
    rate: float | None = None
    normal_rate: float | None = None
    slow: bool = False


_FRESHNESS_COLUMNS = tuple(f.name for f in fields(SymbolFreshness))
_MARKETS = frozenset(m.value for m in Market)


def freshness_to_json(records: tuple[SymbolFreshness, ...]) -> dict[str, list[Any]]:
    """Columnar JSON (one list per field): compact for 1,500 symbols."""
    return {name: [getattr(r, name) for r in records] for name in _FRESHNESS_COLUMNS}


def freshness_from_json(data: Any) -> tuple[SymbolFreshness, ...] | None:
    """Read ``freshness_to_json``'s shape; None when absent or malformed (the reader keeps what it had)."""
    if not isinstance(data, dict) or not isinstance(data.get("symbol"), list):
        return None
    n = len(data["symbol"])
    columns: dict[str, list[Any]] = {}
    for name in _FRESHNESS_COLUMNS:
        column = data.get(name)
        columns[name] = column if isinstance(column, list) and len(column) == n else [None] * n
    records = []
    for i in range(n):
        row = {name: columns[name][i] for name in _FRESHNESS_COLUMNS if columns[name][i] is not None}
        market = row.pop("market", None)
        if market in _MARKETS:
            row["market"] = Market(market)
        if isinstance(row.get("symbol"), str):
            records.append(_from_mapping(SymbolFreshness, row))
    return tuple(records)


@dataclass(frozen=True, slots=True)
class ReadyReport:
    """The worker is connected and subscribed: its shard may count as RUNNING."""


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker's state now: its counters, its journal and connection gauges, and its last words.

    ``last_error`` is already masked by the worker. Times are Unix seconds.
    """

    counters: Counters = field(default_factory=Counters)
    batch_seconds_max: float = 0.0
    pending_rows: int = 0
    connected: bool = False
    subscribed: bool = False
    catching_up: bool = False
    failed_symbols: tuple[str, ...] = ()
    journal_bytes: int = 0
    journal_backlog: int = 0
    journal_full: bool = False
    disk_full: bool = False
    disk_free_bytes: int | None = None
    seconds_behind: float = 0.0
    last_tick_at: float | None = None
    last_event_ts: float | None = None
    last_error: str | None = None
    #: The last time the database went back in time, in one line (None: never in this process).
    last_rollback: str | None = None
    #: Per-symbol freshness, sent every few reports (None in the others: the reader keeps the last one).
    freshness: tuple[SymbolFreshness, ...] | None = None
    #: The shard's stale_after (seconds) that ``freshness`` was judged by.
    stale_after: float = 0.0

    @property
    def stale_symbols(self) -> tuple[str, ...]:
        """The symbols judged stale in the last freshness record."""
        return tuple(r.symbol for r in self.freshness or () if r.stale)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "counters"}
        data["counters"] = dataclasses.asdict(self.counters)
        data["failed_symbols"] = list(self.failed_symbols)
        data["freshness"] = None if self.freshness is None else freshness_to_json(self.freshness)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerReport:
        counters = data.get("counters")
        symbols = data.get("failed_symbols")
        base = _from_mapping(cls, {k: v for k, v in data.items()
                                   if k not in ("counters", "failed_symbols", "freshness")})
        return dataclasses.replace(
            base, freshness=freshness_from_json(data.get("freshness")),
            counters=_from_mapping(Counters, counters) if isinstance(counters, dict) else Counters(),
            failed_symbols=tuple(s for s in symbols if isinstance(s, str)) if isinstance(symbols, list) else ())


def encode_report(report: ReadyReport | WorkerReport) -> bytes:
    """One report line for the pipe."""
    if isinstance(report, ReadyReport):
        return b'{"type":"ready"}\n'
    return orjson.dumps({"type": "stats", **report.to_json()}) + b"\n"


def decode_report(line: bytes | str) -> ReadyReport | WorkerReport:
    """Read one report line; raise ValueError when it is not one."""
    data = orjson.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a report line is a JSON object")
    kind = data.get("type")
    if kind == "ready":
        return ReadyReport()
    if kind == "stats":
        return WorkerReport.from_json(data)
    raise ValueError(f"unknown report type {str(kind)[:40]!r}")


class ShardState(enum.StrEnum):
    """A shard's lifecycle state on its supervisor (the machine: ``shardctl.supervisor.states``)."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    FATAL = "FATAL"
    STANDBY = "STANDBY"


class Role(enum.StrEnum):
    """A host's part in a shard's lease, cluster mode (the tracker: ``shardctl.supervisor.lease``)."""

    UNKNOWN = "UNKNOWN"            #: no answer from the database yet
    OWNER = "OWNER"                #: we hold the lease at ``epoch``: our worker may stream
    STANDBY = "STANDBY"            #: another host holds it (or we wait for a handover)
    HANDING_OVER = "HANDING_OVER"  #: an operator moved the shard: our worker drains, then we hand over


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """What the supervisor knows of one shard: its lifecycle, and its workers' reports added up.

    ``counters`` are totals across the shard's worker processes; ``worker``
    is the current process's last report (empty when none runs, except the
    sticky times and error, kept from the last one). Flat in JSON: one key
    per field of all three (the enums by value).
    """

    name: str
    state: ShardState
    reason: str | None = None
    wanted: bool = False
    pid: int | None = None
    since: float | None = None
    uptime: float | None = None
    restarts: int = 0
    failures: int = 0
    symbols: int = 0
    ticks_per_second: float = 0.0
    last_exit: str | None = None
    #: Cluster mode (all None/empty without ``[cluster]``): this host, its lease role for the shard
    #: (``Role``), the host that holds the lease and its epoch, the other
    #: hosts renewing their heartbeats (standing by), and whether this host's last lease round
    #: reached the database (the view is as of that round).
    host_id: str | None = None
    lease_role: Role | None = None
    lease_owner: str | None = None
    lease_epoch: int | None = None
    standby_hosts: tuple[str, ...] = ()
    lease_database_ok: bool | None = None
    counters: Counters = field(default_factory=Counters)
    worker: WorkerReport = field(default_factory=WorkerReport)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("counters", "worker")}
        data["standby_hosts"] = list(self.standby_hosts)
        worker = self.worker.to_json()
        del worker["counters"]
        return {**data, **worker, **dataclasses.asdict(self.counters)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardStatus:
        if not isinstance(data.get("name"), str) or data.get("state") not in ShardState.__members__:
            raise ValueError("a shard status needs a name and a state")
        role = data.get("lease_role")
        data = {**data, "state": ShardState(data["state"]),
                "lease_role": Role(role) if isinstance(role, str) and role in Role.__members__ else None}
        own = _from_mapping(cls, {k: v for k, v in data.items() if k not in ("counters", "worker", "standby_hosts")})
        hosts = data.get("standby_hosts")
        return dataclasses.replace(own, counters=_from_mapping(Counters, data),
                                   standby_hosts=tuple(h for h in hosts if isinstance(h, str))
                                   if isinstance(hosts, list) else (),
                                   worker=WorkerReport.from_json({**data, "counters": None}))
