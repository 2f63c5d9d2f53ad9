"""The local feed's symbol catalog and price simulation.

``Catalog`` promises: every symbol it knows has an ``Instrument`` (asset class,
exchange, the fields Twelve Data sends for that class) and a random-walk
``PriceState`` shared by every connection of one feed. Symbols outside the
catalog are unknown and land in a subscribe-status ``fails`` list.

Asset classes and the shapes of their price events (see
``reference/twelvedata-protocol.md``):

    stock   symbol, currency, exchange, mic_code, type "Common Stock", timestamp, price, day_volume
    crypto  symbol, currency_base, currency_quote, exchange, type "Digital Currency",
            timestamp, price, bid, ask, day_volume
    forex   symbol, currency_base, currency_quote, type "Physical Currency", timestamp, price, bid, ask
    metal   symbol, currency, currency_base ("Gold Spot"), currency_quote, type "Physical Currency",
            timestamp, price, bid, ask

Stocks, ETFs (``type`` "ETF") and indices (``type`` "Index") share the stock
event shape and carry the ``name`` Twelve Data's reference lists give them;
``shardctl.feed.reference`` serves those lists. Extra symbols are classified by
shape: ``X/Y`` with a crypto base is crypto, with a metal base (XAU, XAG, XPT,
XPD) a metal, any other ``X/Y`` forex, and anything else a stock
(``SYMBOL:EXCHANGE`` names its exchange).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

STOCK, CRYPTO, FOREX, METAL = "stock", "crypto", "forex", "metal"

CRYPTO_NAMES = {
    "BTC": "Bitcoin", "ETH": "Ethereum", "SOL": "Solana", "XRP": "Ripple", "ADA": "Cardano",
    "DOGE": "Dogecoin", "LTC": "Litecoin", "DOT": "Polkadot", "AVAX": "Avalanche",
    "LINK": "Chainlink", "BNB": "Binance Coin", "MATIC": "Polygon", "BCH": "Bitcoin Cash",
    "XLM": "Stellar", "ATOM": "Cosmos", "UNI": "Uniswap", "TRX": "TRON", "SHIB": "Shiba Inu",
    "USDT": "Tether", "USDC": "USD Coin",
}
METAL_NAMES = {"XAU": "Gold Spot", "XAG": "Silver Spot", "XPT": "Platinum Spot", "XPD": "Palladium Spot"}
CURRENCY_NAMES = {
    "USD": "US Dollar", "EUR": "Euro", "GBP": "British Pound", "JPY": "Japanese Yen",
    "CHF": "Swiss Franc", "CAD": "Canadian Dollar", "AUD": "Australian Dollar",
    "NZD": "New Zealand Dollar", "CNY": "Chinese Yuan", "SEK": "Swedish Krona",
    "NOK": "Norwegian Krone", "MXN": "Mexican Peso", "HKD": "Hong Kong Dollar",
    "SGD": "Singapore Dollar", "INR": "Indian Rupee", "BRL": "Brazilian Real",
}

#: (symbol, name, exchange, mic_code, country, currency, start price)
_STOCKS = (
    ("AAPL", "Apple Inc", "NASDAQ", "XNGS", "United States", "USD", 190.0),
    ("MSFT", "Microsoft Corporation", "NASDAQ", "XNGS", "United States", "USD", 420.0),
    ("GOOGL", "Alphabet Inc", "NASDAQ", "XNGS", "United States", "USD", 170.0),
    ("AMZN", "Amazon.com Inc", "NASDAQ", "XNGS", "United States", "USD", 185.0),
    ("NVDA", "NVIDIA Corporation", "NASDAQ", "XNGS", "United States", "USD", 120.0),
    ("TSLA", "Tesla Inc", "NASDAQ", "XNGS", "United States", "USD", 240.0),
    ("META", "Meta Platforms Inc", "NASDAQ", "XNGS", "United States", "USD", 500.0),
    ("NFLX", "Netflix Inc", "NASDAQ", "XNGS", "United States", "USD", 650.0),
    ("AMD", "Advanced Micro Devices Inc", "NASDAQ", "XNGS", "United States", "USD", 160.0),
    ("INTC", "Intel Corporation", "NASDAQ", "XNGS", "United States", "USD", 30.0),
    ("IBM", "International Business Machines Corporation", "NYSE", "XNYS", "United States", "USD", 190.0),
    ("JPM", "JPMorgan Chase & Co", "NYSE", "XNYS", "United States", "USD", 200.0),
    ("V", "Visa Inc", "NYSE", "XNYS", "United States", "USD", 275.0),
    ("KO", "The Coca-Cola Company", "NYSE", "XNYS", "United States", "USD", 62.0),
    ("RY", "Royal Bank of Canada", "TSX", "XTSE", "Canada", "CAD", 160.0),
)
#: Funds and indices stream like stocks (``type`` says which); Twelve Data lists them under /etfs and /indices.
_ETFS = (
    ("SPY", "SPDR S&P 500 ETF Trust", "NYSE", "ARCX", "United States", "USD", 520.0),
    ("QQQ", "Invesco QQQ Trust", "NASDAQ", "XNGS", "United States", "USD", 440.0),
)
_INDICES = (
    ("SPX", "S&P 500", "NYSE", "XNYS", "United States", "USD", 5200.0),
    ("IXIC", "NASDAQ Composite", "NASDAQ", "XNGS", "United States", "USD", 16400.0),
    ("DJI", "Dow Jones Industrial Average", "NYSE", "XNYS", "United States", "USD", 39000.0),
)
ETF_TYPE, INDEX_TYPE = "ETF", "Index"
_CRYPTO = (("BTC/USD", 65000.0), ("ETH/USD", 3200.0), ("SOL/USD", 150.0), ("XRP/USD", 0.55),
           ("ADA/USD", 0.45), ("DOGE/USD", 0.12), ("LTC/USD", 80.0), ("ETH/BTC", 0.05))
_FOREX = (("EUR/USD", 1.085), ("GBP/USD", 1.27), ("USD/JPY", 151.5), ("USD/CHF", 0.90),
          ("AUD/USD", 0.66), ("USD/CAD", 1.36))
_METALS = (("XAU/USD", 2350.0), ("XAG/USD", 28.0))

_KIND_DECIMALS = {STOCK: 4, CRYPTO: 2, FOREX: 5, METAL: 2}
_KIND_SIGMA = {STOCK: 2e-4, CRYPTO: 4e-4, FOREX: 5e-5, METAL: 1e-4}


@dataclass(frozen=True)
class Instrument:
    """One known symbol: its asset class and the static fields of its events."""

    symbol: str
    kind: str
    exchange: str
    mic_code: str
    country: str
    type: str
    currency: str = ""
    currency_base: str = ""
    currency_quote: str = ""
    start_price: float = 100.0
    #: The instrument's name as Twelve Data's reference lists give it (stocks, ETFs, indices).
    name: str = ""

    def status_entry(self) -> dict[str, str]:
        """The ``success`` entry of a subscribe-status for this symbol."""
        return {"symbol": self.symbol, "exchange": self.exchange, "mic_code": self.mic_code,
                "country": self.country, "type": self.type}

    def event_template(self) -> dict[str, Any]:
        """The price event without ``timestamp``/``price``/``bid``/``ask``/``day_volume``, in wire order."""
        event: dict[str, Any] = {"event": "price", "symbol": self.symbol}
        if self.kind == STOCK:
            event.update(currency=self.currency, exchange=self.exchange, mic_code=self.mic_code,
                         type=self.type)
        elif self.kind == CRYPTO:
            event.update(currency_base=self.currency_base, currency_quote=self.currency_quote,
                         exchange=self.exchange, type=self.type)
        elif self.kind == METAL:
            event.update(currency=self.currency, currency_base=self.currency_base,
                         currency_quote=self.currency_quote, type=self.type)
        else:
            event.update(currency_base=self.currency_base, currency_quote=self.currency_quote,
                         type=self.type)
        return event


def _pair(symbol: str, kind: str, price: float) -> Instrument:
    base, _, quote = symbol.partition("/")
    quote_name = CURRENCY_NAMES.get(quote, CRYPTO_NAMES.get(quote, quote))
    if kind == CRYPTO:
        return Instrument(symbol, CRYPTO, "Coinbase Pro", "Coinbase Pro", "", "Digital Currency",
                          currency_base=CRYPTO_NAMES.get(base, base), currency_quote=quote_name,
                          start_price=price)
    if kind == METAL:
        return Instrument(symbol, METAL, "PHYSICAL CURRENCY", "PHYSICAL CURRENCY", "", "Physical Currency",
                          currency=quote, currency_base=METAL_NAMES.get(base, base),
                          currency_quote=quote_name, start_price=price)
    return Instrument(symbol, FOREX, "PHYSICAL CURRENCY", "PHYSICAL CURRENCY", "", "Physical Currency",
                      currency_base=CURRENCY_NAMES.get(base, base), currency_quote=quote_name,
                      start_price=price)


def _guess_price(symbol: str, low: float, high: float) -> float:
    """A stable start price for an extra symbol (the same in every run)."""
    return round(low + (zlib.crc32(symbol.encode()) % 10_000) / 10_000 * (high - low), 4)


def split_symbol(text: str) -> tuple[str, str | None]:
    """``"RY:TSX"`` → ``("RY", "TSX")``; ``"AAPL"`` → ``("AAPL", None)``; pairs keep their slash."""
    text = text.strip()
    symbol, sep, exchange = text.partition(":")
    return (symbol.strip(), exchange.strip() or None) if sep else (text, None)


def classify(text: str) -> Instrument:
    """An ``Instrument`` for any symbol, by shape (see the module docstring)."""
    symbol, exchange = split_symbol(text)
    if "/" in symbol:
        base = symbol.partition("/")[0]
        if base in CRYPTO_NAMES:
            return _pair(symbol, CRYPTO, _guess_price(symbol, 1.0, 500.0))
        if base in METAL_NAMES:
            return _pair(symbol, METAL, _guess_price(symbol, 20.0, 2500.0))
        return _pair(symbol, FOREX, _guess_price(symbol, 0.5, 2.0))
    exchange = exchange or "NASDAQ"
    mic = {"NASDAQ": "XNGS", "NYSE": "XNYS", "TSX": "XTSE", "LSE": "XLON"}.get(exchange.upper(), exchange)
    return Instrument(symbol, STOCK, exchange, mic, "United States" if mic in ("XNGS", "XNYS") else "",
                      "Common Stock", currency="USD", start_price=_guess_price(symbol, 10.0, 500.0),
                      name=f"{symbol} (simulated)")


def builtin_instruments() -> list[Instrument]:
    """Every symbol the feed knows without being told."""
    out = [Instrument(s, STOCK, ex, mic, country, kind, currency=cur, start_price=p, name=name)
           for table, kind in ((_STOCKS, "Common Stock"), (_ETFS, ETF_TYPE), (_INDICES, INDEX_TYPE))
           for s, name, ex, mic, country, cur, p in table]
    out += [_pair(s, CRYPTO, p) for s, p in _CRYPTO]
    out += [_pair(s, FOREX, p) for s, p in _FOREX]
    out += [_pair(s, METAL, p) for s, p in _METALS]
    return out


@dataclass
class PriceState:
    """One symbol's random walk; one per feed, advanced by every connection that streams it."""

    instrument: Instrument
    price: float
    day_volume: int
    template: dict[str, Any] = field(default_factory=dict)
    decimals: int = 4
    sigma: float = 1e-4
    has_quote: bool = False
    has_volume: bool = True


class Catalog:
    """The symbols a feed knows, with their shared price walks.

    Not thread-safe: the feed touches it from its event-loop thread only.
    """

    def __init__(self, extra: Iterable[str] = (), *, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self._instruments: dict[str, Instrument] = {}
        self._states: dict[str, PriceState] = {}
        for instrument in builtin_instruments():
            self._instruments[instrument.symbol] = instrument
        for text in extra:
            self.add(text)

    def add(self, text: str) -> Instrument:
        """Make ``text`` (``SYMBOL`` or ``SYMBOL:EXCHANGE``) known; an already-known symbol is kept."""
        symbol, _ = split_symbol(text)
        if symbol not in self._instruments:
            self._instruments[symbol] = classify(text)
        return self._instruments[symbol]

    def __len__(self) -> int:
        return len(self._instruments)

    def instruments(self) -> list[Instrument]:
        """Every known instrument, built-in ones first, then extras in the order they were added."""
        return list(self._instruments.values())

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._instruments

    def lookup(self, symbol: str) -> Instrument | None:
        """The instrument for ``symbol`` (exchange suffix ignored), or None when unknown."""
        return self._instruments.get(split_symbol(symbol)[0])

    def state(self, symbol: str) -> PriceState:
        """The shared walk of a known symbol, created on first use."""
        state = self._states.get(symbol)
        if state is None:
            inst = self._instruments[symbol]
            state = PriceState(
                instrument=inst, price=inst.start_price,
                day_volume=self.rng.randint(10_000, 5_000_000) if inst.kind in (STOCK, CRYPTO) else 0,
                template=inst.event_template(), decimals=_KIND_DECIMALS[inst.kind],
                sigma=_KIND_SIGMA[inst.kind], has_quote=inst.kind != STOCK,
                has_volume=inst.kind in (STOCK, CRYPTO))
            if inst.start_price < 1.0:
                state.decimals = 6
            self._states[symbol] = state
        return state

    def tick(self, state: PriceState, timestamp: int) -> bytes:
        """Advance ``state`` one step and return the encoded price event (a JSON text frame's bytes)."""
        rng = self.rng
        price = state.price * (1.0 + rng.gauss(0.0, state.sigma))
        floor = 10.0 ** -state.decimals
        if price < floor:
            price = floor
        state.price = price
        event = state.template.copy()
        event["timestamp"] = timestamp
        event["price"] = round(price, state.decimals)
        if state.has_quote:
            half = price * 5e-5
            event["bid"] = round(price - half, state.decimals)
            event["ask"] = round(price + half, state.decimals)
        if state.has_volume:
            state.day_volume += rng.randint(1, 500)
            event["day_volume"] = state.day_volume
        return orjson.dumps(event)

    def malformed(self, state: PriceState, timestamp: int) -> bytes:
        """A price event for ``state``'s symbol whose ``price`` is not a number."""
        event = state.template.copy()
        event["timestamp"] = timestamp
        event["price"] = "n/a"
        return orjson.dumps(event)
