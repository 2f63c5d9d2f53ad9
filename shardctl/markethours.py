"""Market calendars: when a symbol's market trades, at any moment past or present.

One calendar per shard (``market_hours`` in its config), shared by the
worker's freshness/slowdown states and by ``shardctl audit``:

    "auto"    no schedule: the worker asks Twelve Data's ``/market_state`` (crypto 24/7); the audit,
              which looks at the past, counts every minute as open
    "24/7"    always open (crypto)
    "forex"   closed from Friday 17:00 to Sunday 17:00 New York time (the forex weekend)
    "XNYS"... an exchange's regular session, Monday to Friday in its own time zone (``SESSIONS``;
              holidays are not known: a holiday reads open)
    "America/New_York 09:30-16:00"   any other session, Monday to Friday: an IANA zone and local times

``MarketHours.is_open(t)`` answers for one Unix time (``None`` for "auto":
not known from a schedule); ``open_minutes(first, last)`` answers for a
range of minute numbers (Unix seconds // 60) at once. Pure: every time comes
from the caller, so tests choose any hour and any weekday.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["AUTO", "ALWAYS", "FOREX", "SESSIONS", "MarketHours", "Session", "parse_market_hours",
           "MARKET_HOURS_CHOICES"]

AUTO, ALWAYS, FOREX = "auto", "24/7", "forex"


@dataclass(frozen=True)
class Session:
    """A regular trading session: ``open``–``close`` local time in ``zone``, on ``weekdays`` (0 = Monday)."""

    zone: str
    open: time
    close: time
    weekdays: frozenset[int] = frozenset(range(5))


#: Regular sessions by MIC code (and the exchange names Twelve Data uses for them).
SESSIONS: dict[str, Session] = {
    "XNYS": Session("America/New_York", time(9, 30), time(16, 0)),
    "XNGS": Session("America/New_York", time(9, 30), time(16, 0)),
    "ARCX": Session("America/New_York", time(9, 30), time(16, 0)),
    "XTSE": Session("America/Toronto", time(9, 30), time(16, 0)),
    "XLON": Session("Europe/London", time(8, 0), time(16, 30)),
}
_ALIASES = {"NYSE": "XNYS", "NASDAQ": "XNGS", "TSX": "XTSE", "LSE": "XLON"}
MARKET_HOURS_CHOICES = (AUTO, ALWAYS, FOREX, *SESSIONS, *_ALIASES)
_FOREX_ZONE = "America/New_York"


@dataclass(frozen=True)
class MarketHours:
    """One calendar (see the module docstring); ``name`` is how the config spells it."""

    name: str
    session: Session | None = None

    @property
    def scheduled(self) -> bool:
        """True when the calendar answers from a schedule (everything but "auto")."""
        return self.name != AUTO

    def is_open(self, t: float) -> bool | None:
        """Whether the market trades at Unix time ``t``; None for "auto" (no schedule)."""
        if self.name == AUTO:
            return None
        if self.name == ALWAYS:
            return True
        return any(lo <= t < hi for lo, hi in self._open_spans(t - 7 * 86400, t + 86400))

    def open_minutes(self, first: int, last: int) -> list[bool]:
        """For each minute number first..last (inclusive): open at the minute's start. "auto" reads open."""
        count = last - first + 1
        if count <= 0:
            return []
        if self.name in (AUTO, ALWAYS):
            return [True] * count
        out = [False] * count
        for lo, hi in self._open_spans(first * 60 - 7 * 86400, (last + 1) * 60 + 86400):
            a = max(first, -(-int(lo) // 60))  # first minute starting at or after lo
            b = min(last, -(-int(hi) // 60) - 1)  # last minute starting before hi
            for i in range(a - first, b - first + 1):
                out[i] = True
        return out

    def _open_spans(self, lo: float, hi: float) -> list[tuple[float, float]]:
        """Open stretches [start, end) in Unix seconds that overlap [lo, hi), in order."""
        spans: list[tuple[float, float]] = []
        zone = ZoneInfo(_FOREX_ZONE if self.session is None else self.session.zone)
        day = datetime.fromtimestamp(lo, timezone.utc).astimezone(zone).date() - timedelta(days=1)
        end = datetime.fromtimestamp(hi, timezone.utc).astimezone(zone).date() + timedelta(days=1)
        while day <= end:
            span = self._day_span(day, zone)
            if span is not None and span[1] > lo and span[0] < hi:
                spans.append(span)
            day += timedelta(days=1)
        return spans

    def _day_span(self, day: date, zone: ZoneInfo) -> tuple[float, float] | None:
        """The open stretch that starts on local ``day`` (forex: from 17:00 to the next day's 17:00)."""
        if self.session is None:  # forex: a trading day opens at 17:00 the evening before, Sunday to Thursday
            if day.weekday() not in (6, 0, 1, 2, 3):
                return None
            start = datetime.combine(day, time(17, 0), zone)
            return start.timestamp(), datetime.combine(day + timedelta(days=1), time(17, 0), zone).timestamp()
        if day.weekday() not in self.session.weekdays:
            return None
        return (datetime.combine(day, self.session.open, zone).timestamp(),
                datetime.combine(day, self.session.close, zone).timestamp())


def parse_market_hours(text: str) -> MarketHours:
    """The calendar named ``text`` (see the module docstring); ValueError listing the choices otherwise."""
    name = text.strip()
    if name in (AUTO, ALWAYS, FOREX):
        return MarketHours(name)
    code = _ALIASES.get(name.upper(), name.upper())
    if code in SESSIONS:
        return MarketHours(code, SESSIONS[code])
    zone, _, hours = name.partition(" ")
    opens, _, closes = hours.strip().partition("-")
    try:
        session = Session(str(ZoneInfo(zone)), time.fromisoformat(opens.strip()), time.fromisoformat(closes.strip()))
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        session = None
    if session is None or session.close <= session.open:
        raise ValueError(f"unknown market hours {text!r}; expected one of {', '.join(map(repr, MARKET_HOURS_CHOICES))}"
                         ' or a session like "America/New_York 09:30-16:00"')
    return MarketHours(name, session)
