"""Reading the config sections about where rows go: ``[database]``, ``[tables]`` and ``[timescaledb]``.

Each ``read_*`` function converts one section, reporting every problem on
the reader (file, key, fix) and falling back to the default for a bad value,
so the caller always gets a complete dataclass.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from shardctl.config.model import (
    CANDLE_INTERVALS,
    DatabaseConfig,
    TablesConfig,
    TimescaleConfig,
    parse_duration,
    resolve_path,
)
from shardctl.config.values import ValueReader

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Keys of ``[timescaledb]``.
TIMESCALEDB_KEYS = tuple(f.name for f in fields(TimescaleConfig))

#: How far back each candle's refresh policy reaches (its start_offset, see shardctl.db.candlespec):
#: a retention must keep at least that much, or the policy would rebuild (or erase) what retention dropped.
_REFRESH_REACH = {"1m": 600.0, "1h": 3 * 3600.0, "1d": 3 * 86400.0}


def read_database(reader: ValueReader, raw: Mapping[str, Any], base: Path, state_dir: Path) -> DatabaseConfig:
    """``[database]``: a DSN, a variable holding one, or the embedded server's directory."""
    dsn = reader.string(raw, "dsn", "database.dsn", None)
    dsn_env = reader.string(raw, "dsn_env", "database.dsn_env", None)
    if dsn and dsn_env:
        reader.problem("database", "set either dsn or dsn_env, not both")
    if dsn and re.search(r"://[^/@:]+:[^/@]+@|password\s*=", dsn):
        reader.warn("database.dsn", "holds a password; put it in the environment (dsn_env) or ~/.pgpass")
    embedded_value = reader.string(raw, "embedded_dir", "database.embedded_dir", None)
    return DatabaseConfig(
        dsn=dsn, dsn_env=dsn_env,
        embedded_dir=resolve_path(base, embedded_value) if embedded_value else state_dir / "postgres",
    )


def read_tables(reader: ValueReader, raw: Mapping[str, Any]) -> TablesConfig:
    """``[tables]``: relation names (plain identifiers, all different) and the candle intervals to keep."""
    values: dict[str, Any] = {}
    defaults = TablesConfig()
    for f in fields(TablesConfig):
        if f.type != "str":
            continue
        default: str = getattr(defaults, f.name)
        name = reader.string(raw, f.name, f"tables.{f.name}", default)
        if name and not _IDENTIFIER.match(name):
            reader.problem(f"tables.{f.name}", f"{name!r} is not a plain SQL identifier (letters, digits, _)")
            name = default
        values[f.name] = name
    for key, name in values.items():
        if list(values.values()).index(name) != list(values).index(key):
            reader.problem(f"tables.{key}", f"{name!r} is already the name of another table; choose another")
    candles = raw.get("candles", list(CANDLE_INTERVALS))
    if not isinstance(candles, list) or any(c not in CANDLE_INTERVALS for c in candles) or "1d" not in candles:
        reader.problem("tables.candles", f"must be a list of intervals from {list(CANDLE_INTERVALS)} that "
                                         f"includes \"1d\" (the tutorial's one_day_candle), got {candles!r}")
        candles = list(CANDLE_INTERVALS)
    values["candles"] = tuple(c for c in CANDLE_INTERVALS if c in candles)
    realtime = raw.get("realtime_candles", False)
    if not isinstance(realtime, bool):
        reader.problem("tables.realtime_candles", f"must be true or false, got {realtime!r}")
        realtime = False
    values["realtime_candles"] = realtime
    return TablesConfig(**values)


def _whole_duration(reader: ValueReader, raw: Mapping[str, Any], key: str, default: float | None,
                    where: str = "") -> float | None:
    """A duration of at least one second, in whole seconds (what a PostgreSQL interval policy takes)."""
    where = where or f"timescaledb.{key}"
    if key not in raw:
        return default
    try:
        seconds = parse_duration(raw[key])
    except ValueError as exc:
        reader.problem(where, f"{exc}; e.g. \"7d\"")
        return default
    if seconds < 1 or seconds != int(seconds):
        reader.problem(where, f"must be a whole number of seconds, at least 1s, e.g. \"7d\"; got {raw[key]!r}")
        return default
    return seconds


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h" if seconds >= 3600 else (
        f"{seconds / 60:g}m")


def read_timescaledb(reader: ValueReader, raw: Mapping[str, Any], tables: TablesConfig) -> TimescaleConfig:
    """``[timescaledb]``: chunk interval, columnstore ``after``, retentions, direct compress (tutorial defaults)."""
    default = TimescaleConfig()
    chunk = _whole_duration(reader, raw, "chunk_interval", default.chunk_interval)
    after = _whole_duration(reader, raw, "columnstore_after", default.columnstore_after)
    drop = _whole_duration(reader, raw, "drop_after", None)
    reach = max(_REFRESH_REACH[c] for c in tables.candles)
    if drop is not None and drop <= reach:
        reader.problem("timescaledb.drop_after", f"must be longer than {_days(reach)}, how far back the candle "
                                                 f"refresh policies read ticks; got {raw['drop_after']!r}")
        drop = None
    candle_drop: dict[str, float] = {}
    value = raw.get("candle_drop_after", {})
    if not isinstance(value, dict):
        reader.problem("timescaledb.candle_drop_after", 'must be a table of intervals to durations, e.g. '
                                                        '{ "1m" = "30d", "1h" = "365d" }')
        value = {}
    for interval, text in value.items():
        where = f"timescaledb.candle_drop_after.{interval}"
        if interval not in tables.candles:
            reader.problem(where, f"not a configured candle interval; use one of {', '.join(tables.candles)}")
            continue
        seconds = _whole_duration(reader, value, interval, None, where)
        if seconds is None:
            continue
        if seconds <= _REFRESH_REACH[interval]:
            reader.problem(where, f"must be longer than {_days(_REFRESH_REACH[interval])}, the window its refresh "
                                  f"policy rewrites; got {text!r}")
            continue
        candle_drop[interval] = seconds
    direct = raw.get("direct_compress", default.direct_compress)
    if not isinstance(direct, bool):
        reader.problem("timescaledb.direct_compress", f"must be true or false, got {direct!r}")
        direct = default.direct_compress
    return TimescaleConfig(chunk_interval=chunk or default.chunk_interval,
                           columnstore_after=after or default.columnstore_after, drop_after=drop,
                           candle_drop_after=MappingProxyType(candle_drop), direct_compress=direct)
