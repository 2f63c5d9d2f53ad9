"""Twelve Data's reference lists: instrument names, and which configured symbols Twelve Data knows.

``check_symbols(symbols, rest_url, api_key)`` promises a ``SymbolCheck``:
the instrument name of every symbol found (keyed by the symbol as ticks
store it, without a ``:EXCHANGE`` suffix), the symbols found in no list
with up to three close matches from the lists fetched (``difflib``), and
how many list requests were made. Each list request costs one API credit;
a list is fetched only while some symbol of its shape is still unknown:

    pairs (X/Y)   /cryptocurrencies, then /forex_pairs
    others        /stocks, then /etfs, then /indices

so a fill costs at most 5 credits (plus the one metadata request that
building a ``TDClient`` makes, once per process), typically 2. Names: a
listing's ``name`` for stocks, ETFs and indices; ``"<currency_base>
<currency_quote>"`` for pairs ("Bitcoin US Dollar"), as Twelve Data's own
``instrument_name`` writes them. Of several listings of one symbol, the one
on the symbol's ``:EXCHANGE`` (name or MIC) wins, else a US one, else the first.

Raises ``ReferenceUnavailable`` (one line, key masked) when the lists cannot
be fetched: no key, a refused key, no network, or credits spent (HTTP 429)
after ``retries_429`` waits of ``wait_429`` seconds.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import requests

from shardctl.errors import ReferenceUnavailable
from shardctl.twelvedata.rest import RestCallError, refused, rest_client

__all__ = ["OTHER_LISTS", "PAIR_LISTS", "Listing", "SymbolCheck", "UnknownSymbol", "check_symbols"]

log = logging.getLogger("shardctl.reference")

#: (path, the twelvedata client method that fetches it), in the order they are tried.
PAIR_LISTS = (("/cryptocurrencies", "get_cryptocurrencies_list"), ("/forex_pairs", "get_forex_pairs_list"))
OTHER_LISTS = (("/stocks", "get_stocks_list"), ("/etfs", "get_etf_list"), ("/indices", "get_indices_list"))


@dataclass(frozen=True)
class Listing:
    """One entry of a reference list, reduced to what shardctl uses."""

    symbol: str
    name: str
    exchange: str = ""
    mic_code: str = ""
    country: str = ""


@dataclass(frozen=True)
class UnknownSymbol:
    """A configured symbol found in no list, with close matches from the lists fetched."""

    symbol: str
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SymbolCheck:
    """What the reference lists said about a set of symbols (see the module docstring)."""

    names: Mapping[str, str]
    unknown: tuple[UnknownSymbol, ...]
    #: Reference lists fetched: one API credit each (a 429 answer spends none).
    credits: int
    lists: tuple[str, ...] = field(default=())


def base_symbol(text: str) -> str:
    """``"RY:TSX"`` → ``"RY"``: the symbol as price events (and so the ticks) carry it."""
    return text.split(":", 1)[0].strip()


def _exchange(text: str) -> str:
    return text.split(":", 1)[1].strip().lower() if ":" in text else ""


def listing_from(entry: Mapping[str, Any]) -> Listing | None:
    """A ``Listing`` from one reference-list entry, or None when it has no symbol or no name."""
    symbol = str(entry.get("symbol") or "").strip()
    name = str(entry.get("name") or "").strip()
    if not name and entry.get("currency_base"):
        name = f"{str(entry['currency_base']).strip()} {str(entry.get('currency_quote') or '').strip()}".strip()
    if not symbol or not name:
        return None
    return Listing(symbol, name, str(entry.get("exchange") or ""), str(entry.get("mic_code") or ""),
                   str(entry.get("country") or ""))


def _pick(listings: Sequence[Listing], configured: str) -> Listing:
    wanted = _exchange(configured)
    if wanted:
        for listing in listings:
            if wanted in (listing.exchange.lower(), listing.mic_code.lower()):
                return listing
    return next((x for x in listings if x.country == "United States"), listings[0])


Fetch = Callable[[str, str], list[Mapping[str, Any]]]


def _fetcher(rest_url: str, api_key: str, retries_429: int, wait_429: float,
             sleep: Callable[[float], None]) -> Fetch:
    client: Any = None

    def fetch(path: str, method: str) -> list[Mapping[str, Any]]:
        nonlocal client
        for attempt in range(retries_429 + 1):
            try:
                if client is None:  # building a TDClient makes a request: only when a list is needed
                    client = rest_client(rest_url, api_key)
                data = getattr(client, method)().as_json()
            except RestCallError as exc:
                if exc.code == 429 and attempt < retries_429:
                    log.warning("reference %s: this minute's API credits are spent; retrying in %gs", path, wait_429)
                    sleep(wait_429)
                    continue
                raise ReferenceUnavailable(refused(rest_url, path, exc, api_key)) from None
            except (requests.RequestException, OSError, ValueError) as exc:
                raise ReferenceUnavailable(f"cannot reach Twelve Data at {rest_url} ({path}): "
                                           f"{type(exc).__name__}") from None
            if not isinstance(data, list):
                raise ReferenceUnavailable(f"Twelve Data ({rest_url}) answered {path} with something that is "
                                           "not a list")
            return [e for e in data if isinstance(e, Mapping)]
        raise AssertionError("unreachable")

    return fetch


def check_symbols(symbols: Iterable[str], rest_url: str, api_key: str | None, *, suggest: bool = True,
                  retries_429: int = 0, wait_429: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                  fetch: Fetch | None = None) -> SymbolCheck:
    """Look ``symbols`` up in Twelve Data's reference lists (see the module docstring for the promises)."""
    wanted = list(dict.fromkeys(s.strip() for s in symbols if s.strip()))
    if not api_key:
        raise ReferenceUnavailable("no Twelve Data API key: export it in the variable named by "
                                   "source.api_key_env (TWELVEDATA_API_KEY by default)")
    fetch = fetch or _fetcher(rest_url, api_key, retries_429, wait_429, sleep)
    names: dict[str, str] = {}
    catalogue: dict[str, list[Listing]] = {}
    fetched: list[str] = []
    for pairs, lists in ((True, PAIR_LISTS), (False, OTHER_LISTS)):
        group = [s for s in wanted if ("/" in base_symbol(s)) == pairs]
        for path, method in lists:
            missing = [s for s in group if base_symbol(s) not in names]
            if not missing:
                break
            fetched.append(path)
            found: dict[str, list[Listing]] = {}
            for entry in fetch(path, method):
                listing = listing_from(entry)
                if listing is not None:
                    found.setdefault(listing.symbol.upper(), []).append(listing)
            for key, value in found.items():
                catalogue.setdefault(key, []).extend(value)
            for s in missing:
                hits = found.get(base_symbol(s).upper())
                if hits:
                    names[base_symbol(s)] = _pick(hits, s).name
    unknown = []
    for s in wanted:
        if base_symbol(s) in names:
            continue
        pool = [k for k in catalogue if ("/" in k) == ("/" in s)]
        close = difflib.get_close_matches(base_symbol(s).upper(), pool, n=3, cutoff=0.6) if suggest else []
        unknown.append(UnknownSymbol(s, tuple(close)))
    return SymbolCheck(names=names, unknown=tuple(unknown), credits=len(fetched), lists=tuple(fetched))
