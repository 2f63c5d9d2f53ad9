"""The tick row every layer speaks: the parser makes it, the batcher holds it, the writer copies it.

``COLUMNS`` is the writer's column order in ``crypto_ticks``; a ``Tick`` is one
row in that order.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

COLUMNS = ("time", "symbol", "price", "day_volume", "bid", "ask")


class Tick(NamedTuple):
    """One price event as stored: UTC event time, symbol, price, and the optional fields."""

    time: datetime
    symbol: str
    price: float
    day_volume: int | float | None
    bid: float | None
    ask: float | None
