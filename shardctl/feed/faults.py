"""Fault modes of the local feed: what each one does and how a spec string names it.

    close            clean close frame (params: code=1000, reason="")
    abort            drop the TCP connection without a close frame
    garbage          send one non-JSON text frame, keep streaming
    malformed_price  send one price event whose price is not a number, keep streaming
    silence          send nothing at all (not even heartbeat replies) for seconds=N, TCP stays open
    bad_key          refuse every new handshake with HTTP 200 until cleared (connection-less)
    mute             stop sending one symbol's price events (symbol=S), every connection, until cleared;
                     the symbol stays subscribed and its siblings keep streaming (connection-less)
    slow             send only a fraction of one symbol's price events (symbol=S, fraction=F, e.g. 0.025),
                     evenly spread, every connection, until cleared: a silent slowdown (connection-less)
    close_market     an exchange closes (exchange=MIC or name): its symbols stop streaming and REST
                     /market_state calls it closed, until cleared (connection-less)

Every connection fault takes ``after=N``: it fires once a connection has sent
N more price events (0 = at once) and ``every=M`` to fire again every M
events after that. Always on, not a fault: a 4th concurrent connection with
one API key closes the oldest with code ``CLOSE_EVICTED``.

A spec on the command line is ``NAME[:KEY=VALUE[,KEY=VALUE...]]``, e.g.
``close:after=500``, ``silence:after=200,seconds=5``, ``garbage:every=1000``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONNECTION_FAULTS = frozenset({"close", "abort", "garbage", "malformed_price", "silence"})
#: Faults that change what the feed streams on every connection, armed until cleared.
STREAM_FAULTS = frozenset({"mute", "slow", "close_market"})
FAULTS = CONNECTION_FAULTS | STREAM_FAULTS | {"bad_key"}

#: The close code of an evicted connection (Twelve Data's own code is undocumented).
CLOSE_EVICTED = 4000
#: The non-JSON frame the ``garbage`` fault sends.
GARBAGE_FRAME = "<<garbage: this frame is not JSON>>"

_INT_PARAMS = {"after", "every", "code", "conn"}
_FLOAT_PARAMS = {"seconds", "fraction"}
_STR_PARAMS = {"reason", "symbol", "exchange"}
_ALLOWED = {
    "close": {"after", "every", "code", "reason", "conn"},
    "abort": {"after", "every", "conn"},
    "garbage": {"after", "every", "conn"},
    "malformed_price": {"after", "every", "conn"},
    "silence": {"after", "every", "seconds", "conn"},
    "bad_key": set(),
    "mute": {"symbol"},
    "slow": {"symbol", "fraction"},
    "close_market": {"exchange"},
}


@dataclass
class Fault:
    """One armed fault: ``name`` plus its parameters (validated by ``make_fault``)."""

    name: str
    after: int = 0
    every: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    conn: int | None = None

    @property
    def seconds(self) -> float:
        return float(self.params.get("seconds", 5.0))

    @property
    def code(self) -> int:
        return int(self.params.get("code", 1000))

    @property
    def reason(self) -> str:
        return str(self.params.get("reason", ""))


def make_fault(name: str, **params: Any) -> Fault:
    """Validate ``name`` and ``params`` and return a ``Fault``; raises ``ValueError`` naming the problem."""
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; expected one of {', '.join(sorted(FAULTS))}")
    unknown = set(params) - _ALLOWED[name]
    if unknown:
        allowed = ", ".join(sorted(_ALLOWED[name])) or "none"
        raise ValueError(f"fault {name!r} takes no parameter {', '.join(sorted(unknown))} (allowed: {allowed})")
    clean: dict[str, Any] = {}
    for key, value in params.items():
        try:
            if key in _INT_PARAMS:
                clean[key] = int(value)
            elif key in _FLOAT_PARAMS:
                clean[key] = float(value)
            else:
                clean[key] = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"fault {name!r}: {key}={value!r} is not a number") from None
        if key in _INT_PARAMS | _FLOAT_PARAMS and clean[key] < 0:
            raise ValueError(f"fault {name!r}: {key} cannot be negative")
    if clean.get("every") == 0:
        raise ValueError(f"fault {name!r}: every must be at least 1")
    code = clean.get("code")
    if code is not None and not (code in (1000, 1001) or 3000 <= code <= 4999):
        raise ValueError(f"fault 'close': code must be 1000, 1001 or 3000-4999, got {code}")
    if name in ("mute", "slow") and not clean.get("symbol", "").strip():
        raise ValueError(f"fault {name!r} needs symbol=S, the symbol to {'silence' if name == 'mute' else 'slow'}")
    if name == "slow" and not 0 < clean.get("fraction", -1) < 1:
        raise ValueError("fault 'slow' needs fraction=F between 0 and 1 (e.g. 0.025: one event in 40)")
    if name == "close_market" and not clean.get("exchange", "").strip():
        raise ValueError("fault 'close_market' needs exchange=MIC (e.g. XNGS) or an exchange name")
    if "every" in clean and "after" not in clean:
        clean["after"] = clean["every"]
    return Fault(name, after=clean.pop("after", 0), every=clean.pop("every", None),
                 conn=clean.pop("conn", None), params=clean)


def parse_fault_spec(spec: str) -> Fault:
    """Parse ``NAME[:KEY=VALUE,...]`` (see the module docstring); raises ``ValueError`` with the fix."""
    name, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"fault spec {spec!r}: expected KEY=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return make_fault(name.strip(), **params)
