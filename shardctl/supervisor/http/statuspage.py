"""The supervisor's live status page and its JSON API, served on the metrics port.

Mounted on ``shardctl.supervisor.http.metrics.MetricsServer`` (``supervisor.metrics_host``,
127.0.0.1 by default) beside ``/metrics`` and ``/healthz``::

    GET  /                                  the page: shard table + candlestick chart (static/statuspage.html)
    GET  /static/statuspage.js | .css       its script and style
    GET  /static/plotly.min.js              plotly.js from the installed plotly package (no CDN: works offline)
    GET  /api/status                        {"shards": [...], "supervisor": {...}, "symbols": {shard: [...]},
                                            "intervals": [...], "now": unix seconds}
    GET  /api/candles?symbol=BTC/USD&interval=1m&since=6h
                                            {"symbol", "interval", "table", "since", "bucket": [...], "open": [...],
                                            "high", "low", "close", "volume"}: columns, oldest bucket first
    POST /api/shards/NAME/restart | stop | start
                                            the control socket's command, through ``Supervisor.handle``;
                                            needs the status token (header X-Shardctl-Token or form field token)

Reads need no token. A state change without the token, or with a wrong one,
is 403; an unknown shard 404; a busy shard 409; a shutting-down supervisor
503; a restart that does not reach RUNNING in time 504. Every error body is
``{"error": "one line", "code": "..."}``; wrong methods get 405 with Allow.

Host and Origin (against DNS rebinding and cross-site requests): every path
here answers only a Host whose name, port aside, is ``localhost``,
``127.0.0.1``, ``::1``, ``supervisor.metrics_host`` (unless a wildcard such
as 0.0.0.0) or one of ``supervisor.allowed_hosts``; any other Host gets 421,
a request without one 400. Ports are not compared: an ssh tunnel may use
another local port, and a rebinding page can only change the name. A POST
that carries an Origin must name such a host with http or https, else 403
before the token is looked at; a POST without Origin (curl) needs only the
token. ``/metrics`` and ``/healthz`` are not served here and answer any Host:
probes and Prometheus use pod IPs and service names, and neither path holds
a secret or changes anything.

The token is the value of ``$supervisor.status_token_env`` when that key is
set, else a random one that ``start()`` writes to ``STATE_DIR/run/
status-token`` (mode 0600) and ``close()`` removes. Logs say where the token
is, never what it is. Candle queries run in a thread (``asyncio.to_thread``)
on a fresh connection with a statement timeout, at most QUERY_SLOTS at once,
so the supervisor's loop never waits for the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import importlib.util
import json
import logging
import os
import re
import secrets
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote

import psycopg2

from shardctl.config.model import Config, SupervisorConfig, parse_duration
from shardctl.db import candles
from shardctl.db import connection as database
from shardctl.db.candlespec import candle_specs
from shardctl.errors import ControlCode, ControlError, ShardctlError
from shardctl.supervisor.control import Command, Reply, Request
from shardctl.supervisor.http.metrics import HttpRequest, HttpResponse

log = logging.getLogger("shardctl.supervisor")

TOKEN_HEADER = "x-shardctl-token"
#: Candle queries running at once; more wait their turn.
QUERY_SLOTS = 2
QUERY_TIMEOUT_MS = 10_000
#: Default and largest look-back per interval: a chart never holds more than MAX_CANDLES buckets.
DEFAULT_SINCE = {"1m": "6h", "1h": "7d", "1d": "180d"}
MAX_CANDLES = 2000
SHARD_ACTIONS = ("restart", "stop", "start")
_ACTION_PATH = re.compile(r"^/api/shards/([^/]{1,200})/([a-z_]{1,20})$")
#: ControlError code → HTTP status.
_CONTROL_STATUS = {ControlCode.NO_SUCH_SHARD: 404, ControlCode.BUSY: 409, ControlCode.ALREADY_RUNNING: 409,
                   ControlCode.NOT_RUNNING: 409, ControlCode.SHUTTING_DOWN: 503, ControlCode.TIMEOUT: 504,
                   ControlCode.BAD_REQUEST: 400, ControlCode.FORBIDDEN: 403}
_STATIC_TYPES = {"statuspage.js": "text/javascript; charset=utf-8", "statuspage.css": "text/css; charset=utf-8"}
_COMMON_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
_PAGE_HEADERS = _COMMON_HEADERS + (
    ("Cache-Control", "no-cache"), ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
                                 "frame-ancestors 'none'")))
_STATIC_DIR = Path(__file__).with_name("static")
#: Host names always served; metrics_host and supervisor.allowed_hosts add to them.
LOOPBACK_HOSTS = frozenset(("localhost", "127.0.0.1", "::1"))
#: Bind addresses that are no name a browser should use.
_WILDCARD_BINDS = frozenset(("0.0.0.0", "::", ""))


def served_hosts(supervisor: SupervisorConfig) -> frozenset[str]:
    """The lower-case host names (IPv6 without brackets) the status page answers to."""
    bound = supervisor.metrics_host.strip().lower().removeprefix("[").removesuffix("]")
    return LOOPBACK_HOSTS | set(supervisor.allowed_hosts) | ({bound} - _WILDCARD_BINDS)


def host_name(authority: str) -> str | None:
    """The name in ``host[:port]`` or ``[v6][:port]``, lower-case and without brackets; None if malformed."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        name, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _, port = authority.partition(":")
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return None
    return name or None


def origin_allowed(origin: str, hosts: frozenset[str]) -> bool:
    """True if ``origin`` is ``http://`` or ``https://`` a host in ``hosts``, any port ("null" never is)."""
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and host_name(authority) in hosts


def token_path(config: Config) -> Path:
    """Where a generated status token is kept: ``STATE_DIR/run/status-token``."""
    return config.state_dir / "run" / "status-token"


def plotly_js_path() -> Path | None:
    """plotly.min.js inside the installed plotly package (found without importing plotly), or None."""
    spec = importlib.util.find_spec("plotly")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    return HttpResponse(status, body, "application/json", _COMMON_HEADERS + (("Cache-Control", "no-store"),) + headers)


def _error(status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return _json(status, {"error": " ".join(message.split()), "code": code}, headers)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float, Decimal)) else None


class StatusPage:
    """The page and API over a supervisor's ``status``/``handle``; ``serve`` is a ``MetricsServer`` app."""

    def __init__(self, config: Callable[[], Config], status: Callable[[], dict[str, Any]],
                 handle: Callable[[Request], Awaitable[Reply]], dsn: Callable[[], str]) -> None:
        self.config = config
        self.status = status
        self.handle = handle
        self.dsn = dsn
        self.token = ""
        self.token_hint = ""
        self._generated: Path | None = None
        self._files: dict[str, bytes] = {}
        self._plotly: dict[str, bytes] = {}
        self._slots = asyncio.Semaphore(QUERY_SLOTS)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Set up the token (see the module docstring) and read the page's files; ShardctlError (one line) if not."""
        config = self.config()
        env = config.supervisor.status_token_env
        if env:
            self.token = os.environ.get(env, "")
            if not self.token.strip():
                raise ShardctlError(f"environment variable {env} (supervisor.status_token_env) is empty; export "
                                    "the status page's token in it, or remove the key to have one generated")
            if len(self.token) < 16:
                log.warning("the status token in $%s is shorter than 16 characters; use a long random one", env)
            self.token_hint = f"it is the value of ${env}"
            log.info("status page token: the value of $%s", env)
        else:
            self.token = secrets.token_urlsafe(32)
            path = token_path(config)
            self._write_token(path)
            self._generated = path
            self.token_hint = f"it is in {path}"
            log.info("status page token written to %s (mode 0600); the page asks for it before its buttons act",
                     path)
        try:
            self._files = {name: (_STATIC_DIR / name).read_bytes()
                           for name in ("statuspage.html", *_STATIC_TYPES)}
        except OSError as exc:
            raise ShardctlError(f"cannot read the status page's files in {_STATIC_DIR}: {exc.strerror}; "
                                "reinstall shardctl") from None

    def _write_token(self, path: Path) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(self.token + "\n")
        except OSError as exc:
            raise ShardctlError(f"cannot write the status token to {path}: {exc.strerror}; check the state "
                                "directory, or set supervisor.status_token_env") from None

    def close(self) -> None:
        """Remove the generated token file if it still holds this supervisor's token."""
        path, self._generated = self._generated, None
        if path is not None:
            with contextlib.suppress(OSError):
                if path.read_text(encoding="ascii").strip() == self.token:
                    path.unlink()

    # ------------------------------------------------------------ routing

    async def serve(self, request: HttpRequest) -> HttpResponse | None:
        """Answer ``request``, or None when the path is not the page's (the server answers 404).

        A request whose Host is not served (see the module docstring) gets 421 (400 without Host) on every path.
        """
        given = request.headers.get("host")
        if not given:
            return _error(400, "bad_request", "a Host header is required")
        name = host_name(given)
        if name not in served_hosts(self.config().supervisor):
            shown = repr(name[:80]) if name else f"{given[:80]!r} (malformed)"
            return _error(421, "misdirected", f"host {shown} is not served here; add it to "
                                              "supervisor.allowed_hosts if it names this supervisor")
        path = request.path
        match = _ACTION_PATH.match(path)
        if match:
            if request.method != "POST":
                return _error(405, "method_not_allowed", f"{path} takes POST", (("Allow", "POST"),))
            return await self._action(request, unquote(match.group(1)), match.group(2))
        gets: dict[str, Callable[[HttpRequest], Awaitable[HttpResponse]]] = {
            "/": self._page, "/index.html": self._page, "/api/status": self._status_json,
            "/api/candles": self._candles, "/static/plotly.min.js": self._plotly_js,
            **{f"/static/{name}": self._static for name in _STATIC_TYPES}}
        handler = gets.get(path)
        if handler is None:
            return _error(404, "not_found", f"no such page {path[:80]!r}; try / or /api/status") \
                if path.startswith(("/api/", "/static/")) else None
        if request.method != "GET":
            return _error(405, "method_not_allowed", f"{path} takes GET", (("Allow", "GET"),))
        return await handler(request)

    async def _page(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self._files["statuspage.html"], "text/html; charset=utf-8", _PAGE_HEADERS)

    async def _static(self, request: HttpRequest) -> HttpResponse:
        name = request.path.rsplit("/", 1)[1]
        return HttpResponse(200, self._files[name], _STATIC_TYPES[name], _COMMON_HEADERS + (
            ("Cache-Control", "no-cache"),))

    async def _plotly_js(self, request: HttpRequest) -> HttpResponse:
        wants_gzip = "gzip" in request.headers.get("accept-encoding", "")
        key = "gzip" if wants_gzip else "plain"
        if key not in self._plotly:
            path = plotly_js_path()
            if path is None:
                return _error(404, "not_found", "plotly is not installed; `pip install plotly` draws the chart")
            self._plotly[key] = await asyncio.to_thread(_load_plotly, path, wants_gzip)
        headers = _COMMON_HEADERS + (("Cache-Control", "max-age=3600"),) + (
            (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")) if wants_gzip else ())
        return HttpResponse(200, self._plotly[key], "text/javascript; charset=utf-8", headers)

    async def _status_json(self, request: HttpRequest) -> HttpResponse:
        config = self.config()
        return _json(200, {**self.status(), "now": time.time(),
                           "symbols": {name: list(shard.symbols) for name, shard in config.shards.items()},
                           "intervals": [spec.interval for spec in candle_specs(config.tables)],
                           "default_since": DEFAULT_SINCE})

    # ------------------------------------------------------------ candles

    async def _candles(self, request: HttpRequest) -> HttpResponse:
        config = self.config()
        params = {key: values[-1] for key, values in parse_qs(request.query, max_num_fields=10).items()}
        symbol, interval = params.get("symbol", ""), params.get("interval", "1d")
        specs = {spec.interval: spec for spec in candle_specs(config.tables)}
        if interval not in specs:
            return _error(400, "bad_request", f"unknown interval {interval[:20]!r}; configured: {', '.join(specs)}")
        symbols = [s for shard in config.shards.values() for s in shard.symbols]
        if not symbol:
            return _error(400, "bad_request", "add ?symbol=... (one of the config's symbols)")
        if symbol not in symbols:
            return _error(404, "no_such_symbol", f"no shard streams {symbol[:40]!r}; known: {', '.join(symbols)}")
        since_text = params.get("since", DEFAULT_SINCE.get(interval, "1d"))
        try:
            since = timedelta(seconds=parse_duration(since_text))
        except ValueError as exc:
            return _error(400, "bad_request", f"since: {exc}")
        spec = specs[interval]
        since = min(since, spec.width * MAX_CANDLES)
        dsn = self.dsn()
        if not dsn:
            return _error(503, "unavailable", "the database is not ready yet; try again in a moment")
        try:
            async with self._slots:
                rows = await asyncio.to_thread(_query_candles, dsn, config, symbol, interval, since)
        except ShardctlError as exc:  # DatabaseError / DatabaseUnavailable: one line, DSN masked
            return _error(503, "database", str(exc))
        return _json(200, {"symbol": symbol, "interval": interval, "table": spec.table,
                           "since": int(since.total_seconds()),
                           "bucket": [row[0].isoformat() for row in rows],
                           **{name: [_number(row[i]) for row in rows]
                              for i, name in ((2, "open"), (3, "high"), (4, "low"), (5, "close"), (6, "volume"))}})

    # ------------------------------------------------------------ shard actions

    async def _action(self, request: HttpRequest, name: str, action: str) -> HttpResponse:
        if action not in SHARD_ACTIONS:
            return _error(404, "not_found", f"unknown action {action!r}; use one of {', '.join(SHARD_ACTIONS)}")
        config = self.config()
        shown = {"shard": name if name in config.shards else "?"}  # never log what a client made up
        origin = request.headers.get("origin")
        if origin is not None and not origin_allowed(origin, served_hosts(config.supervisor)):
            log.warning("status page: %s refused from %s: foreign origin", action, request.peer, extra=shown)
            return _error(403, "forbidden", f"origin {origin[:80]!r} may not change shards here; use the page "
                                            "at an allowed host (supervisor.allowed_hosts)")
        given = request.headers.get(TOKEN_HEADER) or _form_token(request)
        if not given:
            return _error(403, "forbidden", f"this needs the status token in the X-Shardctl-Token header "
                                            f"({self.token_hint})")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
            log.warning("status page: %s refused from %s: wrong status token", action, request.peer, extra=shown)
            return _error(403, "forbidden", f"wrong status token ({self.token_hint})")
        log.info("status page: %s requested from %s", action, request.peer, extra=shown)
        try:
            result = await self.handle(Request(Command(action), shard=name))
        except ControlError as exc:
            return _error(_CONTROL_STATUS.get(exc.code, 500), exc.code, exc.message)
        return _json(200, {"ok": True, **result.to_json()})


def _form_token(request: HttpRequest) -> str:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return ""
    form = parse_qs(request.body.decode("utf-8", "replace"), max_num_fields=10)
    return (form.get("token") or [""])[-1]


def _load_plotly(path: Path, compress: bool) -> bytes:
    data = path.read_bytes()
    return gzip.compress(data, compresslevel=6) if compress else data


def _query_candles(dsn: str, config: Config, symbol: str, interval: str, since: timedelta) -> list[tuple]:
    """``fetch_candles`` on a fresh connection with a statement timeout (runs in a worker thread)."""
    conn = database.connect(dsn, application_name="shardctl-statuspage", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (QUERY_TIMEOUT_MS,))
        conn.autocommit = False
        return candles.fetch_candles(conn, config.tables, symbol, interval, since)
    except psycopg2.Error as exc:
        raise database.map_error(exc, dsn, action="cannot read the candles", conn=conn) from None
    finally:
        conn.close()
