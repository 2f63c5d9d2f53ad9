"""Twelve Data's ``/market_state``: which exchanges are open now, through the ``twelvedata`` package.

``fetch_market_state(rest_url, api_key)`` promises the exchanges Twelve Data
lists (one API credit per call, all exchanges at once), each reduced to an
``ExchangeState``; it raises ``MarketStateUnavailable`` (one line, key
masked) when the list cannot be fetched. The answer is a JSON array of
``{"name", "code" (MIC), "country", "is_market_open", "time_after_open",
"time_to_open", "time_to_close"}`` (times as ``HH:MM:SS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from shardctl.errors import ShardctlError
from shardctl.twelvedata.rest import RestCallError, refused, rest_client, server_text

__all__ = ["ExchangeState", "MarketStateUnavailable", "fetch_market_state", "parse_market_state"]


class MarketStateUnavailable(ShardctlError):
    """``/market_state`` could not be fetched: no network, a refused key, credits spent."""


@dataclass(frozen=True)
class ExchangeState:
    """One exchange from ``/market_state``: its name, MIC code, country, and whether it trades now."""

    name: str
    code: str
    country: str
    is_open: bool


def parse_market_state(payload: Any) -> tuple[ExchangeState, ...]:
    """The exchanges in a ``/market_state`` answer; entries without a name or code, or a boolean state, are skipped."""
    rows = payload.get("data", payload) if isinstance(payload, dict) else payload
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or not isinstance(row.get("is_market_open"), bool):
            continue
        name, code = row.get("name"), row.get("code")
        if isinstance(name, str) or isinstance(code, str):
            out.append(ExchangeState(name if isinstance(name, str) else "", code if isinstance(code, str) else "",
                                     str(row.get("country") or ""), row["is_market_open"]))
    return tuple(out)


def fetch_market_state(rest_url: str, api_key: str) -> tuple[ExchangeState, ...]:
    """Every exchange's state now (one credit; building the client makes one more request per call)."""
    try:
        data = rest_client(rest_url, api_key).get_market_state().as_json()
    except RestCallError as exc:
        raise MarketStateUnavailable(refused(rest_url, "/market_state", exc, api_key)) from None
    except (requests.RequestException, OSError, ValueError) as exc:
        raise MarketStateUnavailable(f"cannot reach {rest_url}/market_state: {server_text(exc, api_key)}") from None
    return parse_market_state(data)
