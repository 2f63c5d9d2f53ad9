"""Fast PostgreSQL binary COPY encoding of tick rows, byte for byte what pgcopy's formatters produce.

pgcopy formats every field of every row through a chain of closures and
builds a ``struct`` format string per row. For shardctl's fixed column set
(time timestamptz, symbol text, price float8, day_volume numeric, bid float8,
ask float8) ``TickEncoder`` does the same work with precompiled
``struct.Struct`` objects chosen by row shape, a timestamp computed once per
distinct ``datetime`` object (the parser hands out one object per second),
per-symbol cached text fields and a small integer fast path for NUMERIC.

Equivalence contract: for every row, ``TickEncoder.encode`` emits exactly the
bytes pgcopy's ``CopyManager.writestream`` would (tests compare them). Any row
the fast path does not recognise (a value of an unexpected type, a NULL in a
NOT NULL column, a naive-offset tzinfo, a non-finite Decimal, ...) is
encoded by the ``slow_row`` callback, i.e. pgcopy's own formatters, which
also raise pgcopy's own errors.
"""

from __future__ import annotations

import math
import struct
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Sequence

from pgcopy.copy import BINCOPY_HEADER, BINCOPY_TRAILER

__all__ = ["BINCOPY_HEADER", "BINCOPY_TRAILER", "TICK_TYPES", "TickEncoder", "fast_path_types_ok",
           "numeric_field", "pgcopy_row"]

#: The PostgreSQL types, by position, the fast path encodes (the writer's COLUMNS order).
TICK_TYPES: tuple[frozenset[str], ...] = (
    frozenset(("timestamptz", "timestamp")),
    frozenset(("text", "varchar")),
    frozenset(("float8",)),
    frozenset(("numeric",)),
    frozenset(("float8",)),
    frozenset(("float8",)),
)

_PG_EPOCH_AWARE = datetime(2000, 1, 1, tzinfo=timezone.utc)
_PG_EPOCH_NAIVE = datetime(2000, 1, 1)
_ONE_US = timedelta(microseconds=1)
_NULL = struct.pack(">i", -1)
_LEN = struct.Struct(">i")
#: NUMERIC header + n base-10000 digits, by n (the field's length prefix included).
_NUMERIC: list[struct.Struct] = [struct.Struct(">ihhHH" + "H" * n) for n in range(8)]
_CACHE_LIMIT = 4096  # entries per value cache before it is cleared
_MAX_FAST_DIGITS = 8000  # base-10000 digits: keeps a NUMERIC field under 64 KiB (the Struct key's 16 bits)
_ZERO_INT = _NUMERIC[0].pack(8, 0, 0, 0, 0)
_NOT_A_TIME = object()  # "no timestamp cached" (None is a value a row may carry)


class _Slow(ValueError):
    """The fast path does not handle this value; pgcopy's formatters will."""


def _numeric_digits(sign: int, coeff: int, exponent: int, ndec: int) -> bytes:
    """NUMERIC field (length prefix included) of ``(-1)**sign * coeff * 10**exponent``, laid out as pgcopy does.

    ``ndec`` is the number of decimal digits pgcopy sees in the coefficient
    (``len(Decimal.as_tuple().digits)``); it only matters for zero, whose
    weight pgcopy derives from it.
    """
    shift = exponent % 4
    if shift:
        coeff *= 10 ** shift
    e4 = exponent // 4
    if coeff == 0:  # pgcopy strips every (all-zero) group of 4, counting them into the weight
        groups = (ndec + shift + 3) // 4
        return _NUMERIC[0].pack(8, 0, groups + e4 - 1, sign * 0x4000, max(0, -exponent))
    stripped = 0
    while coeff % 10000 == 0:
        coeff //= 10000
        stripped += 1
    digits: list[int] = []
    while coeff:
        coeff, d = divmod(coeff, 10000)
        digits.append(d)
    digits.reverse()
    n = len(digits)
    if n > _MAX_FAST_DIGITS:
        raise _Slow("too many digits for the fast NUMERIC path")
    head = (8 + 2 * n, n, stripped + e4 + n - 1, sign * 0x4000, max(0, -exponent))
    if n < len(_NUMERIC):
        return _NUMERIC[n].pack(*head, *digits)
    return struct.pack(f">ihhHH{n}H", *head, *digits)


def _int_field(value: int) -> bytes:
    """NUMERIC field of an int, as pgcopy encodes ``Decimal(value)`` (dscale 0, trailing zero groups stripped)."""
    sign = 0
    if value < 0:
        sign, value = 0x4000, -value
    if value < 10000:
        if value == 0:
            return _ZERO_INT
        return _NUMERIC[1].pack(10, 1, 0, sign, 0, value)
    if value < 100000000:
        hi, lo = divmod(value, 10000)
        if lo:
            return _NUMERIC[2].pack(12, 2, 1, sign, 0, hi, lo)
        return _NUMERIC[1].pack(10, 1, 1, sign, 0, hi)
    if value < 1000000000000:
        hi, rest = divmod(value, 100000000)
        mid, lo = divmod(rest, 10000)
        if lo:
            return _NUMERIC[3].pack(14, 3, 2, sign, 0, hi, mid, lo)
        if mid:
            return _NUMERIC[2].pack(12, 2, 2, sign, 0, hi, mid)
        return _NUMERIC[1].pack(10, 1, 2, sign, 0, hi)
    return _numeric_digits(sign >> 14, value, 0, len(str(value)))


def numeric_field(value: Any) -> bytes | None:
    """NUMERIC field (length prefix included) of an int, float or finite Decimal; None for anything else.

    Bytes equal pgcopy's ``numeric`` formatter applied to ``Decimal(value)``
    for ints, ``Decimal(repr(value))`` for floats (the shortest repr: 7.5
    stays 7.5, 7.0 keeps dscale 1) and the Decimal itself, as shardctl's
    writer has always fed it. bools, NaN/Infinity and other types give None
    (the caller uses pgcopy, which raises or encodes them its own way).
    Raises ValueError for a number beyond the fast path (more than 8,000
    base-10000 digits or 4,300 decimal ones) and struct.error for a weight or
    scale NUMERIC cannot carry (pgcopy's formatter fails there too).
    """
    kind = type(value)
    if kind is int:
        return _int_field(value)
    if kind is float:
        value = Decimal(repr(value))
    elif kind is not Decimal:
        return None
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return None
    coeff = int("".join(map(str, digits))) if len(digits) > 18 else _small_coeff(digits)
    return _numeric_digits(sign, coeff, exponent, len(digits))


def _small_coeff(digits: tuple[int, ...]) -> int:
    coeff = 0
    for d in digits:
        coeff = coeff * 10 + d
    return coeff


def pgcopy_row(formatters: Sequence[Callable[[Any], tuple[str, Sequence[Any]]]], record: Iterable[Any]) -> bytes:
    """One row exactly as pgcopy's ``CopyManager.writestream`` encodes it (same errors too)."""
    fmt = [">h"]
    rdat: list[Any] = [len(formatters)]
    for formatter, val in zip(formatters, record, strict=False):  # pgcopy's zip: a short row stays short
        f, d = formatter(val)
        fmt.append(f)
        rdat.extend(d)
    return struct.pack("".join(fmt), *rdat)


def fast_path_types_ok(atts: Sequence[Any]) -> bool:
    """True if pgcopy column attributes (``inspect.get_types`` rows, in COPY order) fit ``TICK_TYPES``.

    Arrays, enums, length-limited varchar (pgcopy truncates those) and any
    other type keep pgcopy's generic path.
    """
    if len(atts) != len(TICK_TYPES):
        return False
    for att, allowed in zip(atts, TICK_TYPES, strict=True):
        if att.type_category in ("A", "E") or att.type_name not in allowed:
            return False
        if att.type_name == "varchar" and att.type_mod >= 0:
            return False
    return True


class TickEncoder:
    """Encodes (time, symbol, price, day_volume, bid, ask) rows into a binary COPY payload.

    ``encoding`` is the Python codec of the connection (pgcopy encodes text
    with it); ``nullable`` says, per column, whether NULL may be sent without
    pgcopy's NOT NULL check; ``slow_row`` encodes a row the fast path does not
    handle (pgcopy's formatters: same bytes, same errors). Not thread-safe:
    one encoder per CopyManager, like pgcopy's own state.
    """

    def __init__(self, encoding: str, nullable: Sequence[bool],
                 slow_row: Callable[[Any], bytes]) -> None:
        self.encoding = encoding
        self._vol_null_ok, self._bid_null_ok, self._ask_null_ok = nullable[3], nullable[4], nullable[5]
        self._slow_row = slow_row
        self._symbols: dict[str, bytes] = {}
        self._floats: dict[float, bytes] = {}
        # one dict of Structs per bid/ask shape, keyed by len(symbol field) << 16 | len(volume field)
        self._structs: tuple[dict[int, struct.Struct], ...] = ({}, {}, {}, {})
        self.slow_rows = 0  #: rows handed to ``slow_row`` so far (diagnostics, tests)

    def _struct(self, shape: int, key: int) -> struct.Struct:
        tail = ("idid", "iid", "idi", "ii")[shape]  # bid & ask / ask only / bid only / neither
        st = struct.Struct(f">hiq{key >> 16}sid{key & 0xFFFF}s{tail}")
        if len(self._structs[shape]) >= _CACHE_LIMIT:
            self._structs[shape].clear()
        self._structs[shape][key] = st
        return st

    def _symbol(self, symbol: Any) -> bytes:
        if type(symbol) is not str:
            raise _Slow
        data = symbol.encode(self.encoding)  # UnicodeEncodeError: pgcopy reports it
        field = _LEN.pack(len(data)) + data
        if len(field) > 0xFFFF:  # beyond the Struct key's 16 bits: pgcopy encodes it
            raise _Slow
        if len(self._symbols) >= _CACHE_LIMIT:
            self._symbols.clear()
        self._symbols[symbol] = field
        return field

    def _volume(self, volume: Any) -> bytes:
        field = numeric_field(volume)
        if field is None:
            raise _Slow
        if type(volume) is float and volume != 0 and not math.isnan(volume):  # no -0.0 (== 0.0) nor NaN
            if len(self._floats) >= _CACHE_LIMIT:
                self._floats.clear()
            self._floats[volume] = field
        return field

    def encode(self, rows: Iterable[Any]) -> bytes:
        """The whole COPY payload for ``rows``: header, one tuple per row, trailer.

        Raises what pgcopy raises for a row it cannot encode (ValueError,
        TypeError): such rows go through ``slow_row``.
        """
        parts: list[bytes] = [BINCOPY_HEADER]
        append = parts.append
        symbols, floats, structs, int_field = self._symbols, self._floats, self._structs, _int_field
        vol_null_ok, bid_null_ok, ask_null_ok = self._vol_null_ok, self._bid_null_ok, self._ask_null_ok
        last_time: Any = _NOT_A_TIME
        micros = 0
        for row in rows:
            try:
                time, symbol, price, volume, bid, ask = row
                if time is not last_time:
                    if type(time) is not datetime:
                        raise _Slow
                    micros = (time - (_PG_EPOCH_NAIVE if time.tzinfo is None else _PG_EPOCH_AWARE)) // _ONE_US
                    last_time = time
                sym = symbols.get(symbol)
                if sym is None:
                    sym = self._symbol(symbol)
                if volume is None:
                    if not vol_null_ok:
                        raise _Slow
                    vol = _NULL
                else:
                    kind = type(volume)
                    if kind is int:  # day volumes mostly differ tick to tick: computing beats caching
                        vol = int_field(volume)
                    else:
                        vol = (floats.get(volume) if kind is float else None) or self._volume(volume)
                key = len(sym) << 16 | len(vol)
                if bid is not None:
                    if ask is not None:
                        st = structs[0].get(key) or self._struct(0, key)
                        append(st.pack(6, 8, micros, sym, 8, price, vol, 8, bid, 8, ask))
                    elif ask_null_ok:
                        st = structs[2].get(key) or self._struct(2, key)
                        append(st.pack(6, 8, micros, sym, 8, price, vol, 8, bid, -1))
                    else:
                        raise _Slow
                elif not bid_null_ok:
                    raise _Slow
                elif ask is not None:
                    st = structs[1].get(key) or self._struct(1, key)
                    append(st.pack(6, 8, micros, sym, 8, price, vol, -1, 8, ask))
                elif ask_null_ok:
                    st = structs[3].get(key) or self._struct(3, key)
                    append(st.pack(6, 8, micros, sym, 8, price, vol, -1, -1))
                else:
                    raise _Slow
            except Exception:  # noqa: BLE001 - anything unusual: pgcopy's formatters decide (bytes or error)
                last_time = _NOT_A_TIME
                self.slow_rows += 1
                append(self._slow_row(row))
        append(BINCOPY_TRAILER)
        return b"".join(parts)

