"""The local feed's answer to Twelve Data's ``/market_state``: offline, deterministic, switchable per exchange.

``market_state(catalog, closed, params)`` promises Twelve Data's shape, a
JSON array with one entry per stock exchange the feed knows (the four it
ships, plus any exchange of a stock in its catalog):

    {"name", "code" (MIC), "country", "is_market_open", "time_after_open", "time_to_open", "time_to_close"}

Every exchange is open unless its MIC code (or name) is in ``closed``: the
answer never depends on the wall clock, so tests choose it
(``FeedServer.set_market(code, open=False)``, ``shardctl feed --closed-market XNYS``).
The session times are fixed placeholders (an open market closes in 6.5 h).
Filters as Twelve Data reads them: ``exchange`` (name), ``code`` (MIC), ``country``.
"""

from __future__ import annotations

from typing import AbstractSet, Any

from shardctl.feed.catalog import STOCK, Catalog

__all__ = ["EXCHANGES", "market_state"]

#: (name, MIC code, country) of the exchanges every local feed lists.
EXCHANGES = (("NASDAQ", "XNGS", "United States"), ("NYSE", "XNYS", "United States"),
             ("TSX", "XTSE", "Canada"), ("LSE", "XLON", "United Kingdom"))


def market_state(catalog: Catalog, closed: AbstractSet[str], params: dict[str, str]) -> list[dict[str, Any]]:
    """The exchanges' states (see the module docstring); ``closed`` holds upper-case MIC codes or names."""
    known = {code: (name, code, country) for name, code, country in EXCHANGES}
    for inst in catalog.instruments():
        if inst.kind == STOCK and inst.mic_code and inst.mic_code not in known:
            known[inst.mic_code] = (inst.exchange, inst.mic_code, inst.country)
    wanted = {key: params.get(key, "").strip().lower() for key in ("exchange", "code", "country")}
    out = []
    for name, code, country in known.values():
        if any(want and want != have.lower() for want, have in
               ((wanted["exchange"], name), (wanted["code"], code), (wanted["country"], country))):
            continue
        is_open = code.upper() not in closed and name.upper() not in closed
        out.append({"name": name, "code": code, "country": country, "is_market_open": is_open,
                    "time_after_open": "02:00:00" if is_open else "00:00:00",
                    "time_to_open": "00:00:00" if is_open else "12:00:00",
                    "time_to_close": "04:30:00" if is_open else "00:00:00"})
    return out
