"""The candle catalogue: which intervals exist, their relations, and the window a refresh policy covers.

Shared by the schema (which creates the relations and policies) and the
candle refresh and queries. Pure: no database access.

    interval  relation            start_offset  end_offset  schedule
    1m        one_minute_candle   10 minutes    1 minute    1 minute
    1h        one_hour_candle     3 hours       1 hour      1 hour
    1d        one_day_candle      3 days        1 day       1 day   (the seed policy)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from shardctl.config.model import TablesConfig
from shardctl.errors import UsageError

#: Refresh policy per interval: (bucket width, start_offset, end_offset, schedule_interval).
CANDLE_POLICIES: dict[str, tuple[timedelta, timedelta, timedelta, timedelta]] = {
    "1m": (timedelta(minutes=1), timedelta(minutes=10), timedelta(minutes=1), timedelta(minutes=1)),
    "1h": (timedelta(hours=1), timedelta(hours=3), timedelta(hours=1), timedelta(hours=1)),
    "1d": (timedelta(days=1), timedelta(days=3), timedelta(days=1), timedelta(days=1)),
}
#: The TablesConfig field naming each interval's relation.
CANDLE_TABLE_FIELD = {"1m": "minute_candle", "1h": "hour_candle", "1d": "day_candle"}
COLUMNS = ("bucket", "symbol", "open", "high", "low", "close", "day_volume")
UTC = timezone.utc
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # bucket origin (date_bin); any UTC midnight gives the same buckets


@dataclass(frozen=True)
class CandleSpec:
    """One candle interval: its relation and the refresh policy a TimescaleDB job (or shardctl) applies."""

    interval: str
    table: str
    width: timedelta
    start_offset: timedelta
    end_offset: timedelta
    schedule: timedelta


def candle_specs(tables: TablesConfig) -> list[CandleSpec]:
    """The configured candle intervals, finest first."""
    return [CandleSpec(i, getattr(tables, CANDLE_TABLE_FIELD[i]), *CANDLE_POLICIES[i])
            for i in CANDLE_POLICIES if i in tables.candles]


def candle_spec(tables: TablesConfig, interval: str) -> CandleSpec:
    """The spec of ``interval``; UsageError naming the configured intervals if it is not one of them."""
    for spec in candle_specs(tables):
        if spec.interval == interval:
            return spec
    raise UsageError(f"unknown candle interval {interval!r}; configured: {', '.join(tables.candles)}")


def floor_bucket(moment: datetime, width: timedelta) -> datetime:
    """Start of the bucket of ``width`` holding ``moment`` (UTC-aligned, like time_bucket/date_bin)."""
    return _ORIGIN + ((moment.astimezone(UTC) - _ORIGIN) // width) * width


def policy_window(spec: CandleSpec, now: datetime) -> tuple[datetime, datetime]:
    """[lo, hi): the buckets lying wholly in [now - start_offset, now - end_offset), as a policy run refreshes."""
    start = now - spec.start_offset
    lo = floor_bucket(start, spec.width)
    return (lo if lo == start else lo + spec.width), floor_bucket(now - spec.end_offset, spec.width)
