"""The local feed's answers to Twelve Data's reference lists: ``/stocks``, ``/etfs``, ``/indices``,
``/cryptocurrencies`` and ``/forex_pairs``, built from the feed's ``Catalog``.

``reference_list(catalog, path, params)`` promises Twelve Data's shape,
``{"data": [...], "count": N, "status": "ok"}``, one entry per known
instrument of that list:

    /stocks            symbol, name, currency, exchange, mic_code, country, type
    /etfs              symbol, name, currency, exchange, mic_code, country
    /indices           symbol, name, country, currency, exchange, mic_code
    /cryptocurrencies  symbol, available_exchanges, currency_base, currency_quote
    /forex_pairs       symbol, currency_group, currency_base, currency_quote   (metals included)

Filters as Twelve Data reads them: ``symbol`` (exact, case-insensitive),
``exchange`` (name or MIC), ``country``, ``type`` (stocks), ``currency_base``
and ``currency_quote`` (pairs); others (``show_plan``, ``format=JSON``...)
are accepted and ignored. ``format=CSV`` raises ``RestError`` 400: the local
feed speaks JSON only. Each request costs one API credit, as on Twelve Data.
"""

from __future__ import annotations

from typing import Any, Callable

from shardctl.feed.catalog import CRYPTO, ETF_TYPE, FOREX, INDEX_TYPE, METAL, STOCK, Catalog, Instrument

__all__ = ["REFERENCE_PATHS", "ReferenceError", "reference_list"]

_MAJORS = frozenset({"EUR/USD", "USD/JPY", "GBP/USD", "USD/CHF", "AUD/USD", "USD/CAD", "NZD/USD"})


class ReferenceError(Exception):
    """A request the local feed refuses: ``code`` (400) and ``message``, as Twelve Data words them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _listed(instrument: Instrument) -> dict[str, Any]:
    return {"symbol": instrument.symbol, "name": instrument.name or instrument.symbol,
            "currency": instrument.currency, "exchange": instrument.exchange, "mic_code": instrument.mic_code,
            "country": instrument.country}


def _stock(instrument: Instrument) -> dict[str, Any]:
    return {**_listed(instrument), "type": instrument.type}


def _index(instrument: Instrument) -> dict[str, Any]:
    entry = _listed(instrument)
    return {k: entry[k] for k in ("symbol", "name", "country", "currency", "exchange", "mic_code")}


def _crypto(instrument: Instrument) -> dict[str, Any]:
    return {"symbol": instrument.symbol, "available_exchanges": [instrument.exchange],
            "currency_base": instrument.currency_base, "currency_quote": instrument.currency_quote}


def _forex(instrument: Instrument) -> dict[str, Any]:
    group = "Major" if instrument.symbol in _MAJORS else "Exotic" if instrument.kind == METAL else "Minor"
    return {"symbol": instrument.symbol, "currency_group": group, "currency_base": instrument.currency_base,
            "currency_quote": instrument.currency_quote}


def _is_stock(i: Instrument) -> bool:
    return i.kind == STOCK and i.type not in (ETF_TYPE, INDEX_TYPE)


#: path → (which instruments, entry shape)
_LISTS: dict[str, tuple[Callable[[Instrument], bool], Callable[[Instrument], dict[str, Any]]]] = {
    "/stocks": (_is_stock, _stock),
    "/etfs": (lambda i: i.kind == STOCK and i.type == ETF_TYPE, _listed),
    "/indices": (lambda i: i.kind == STOCK and i.type == INDEX_TYPE, _index),
    "/cryptocurrencies": (lambda i: i.kind == CRYPTO, _crypto),
    "/forex_pairs": (lambda i: i.kind in (FOREX, METAL), _forex),
}
REFERENCE_PATHS = frozenset(_LISTS)


def _matches(entry: dict[str, Any], params: dict[str, str]) -> bool:
    for key in ("symbol", "country", "type", "currency_base", "currency_quote"):
        wanted = params.get(key, "").strip().lower()
        if wanted and key in entry and str(entry[key]).lower() != wanted:
            return False
    exchange = params.get("exchange", "").strip().lower()
    if exchange:
        names = {str(entry.get("exchange", "")).lower(), str(entry.get("mic_code", "")).lower(),
                 *(str(e).lower() for e in entry.get("available_exchanges", []))}
        if exchange not in names:
            return False
    return True


def reference_list(catalog: Catalog, path: str, params: dict[str, str]) -> dict[str, Any]:
    """Twelve Data's answer to the reference list at ``path`` (one of ``REFERENCE_PATHS``) for ``params``."""
    if params.get("format", "JSON").upper() != "JSON":
        raise ReferenceError(400, "**format** CSV is not supported by the local feed; use JSON")
    wanted, shape = _LISTS[path]
    data = [entry for entry in (shape(i) for i in catalog.instruments() if wanted(i)) if _matches(entry, params)]
    return {"data": data, "count": len(data), "status": "ok"}
