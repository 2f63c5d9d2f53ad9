"""TOML config → frozen, typed dataclasses.

``load_config`` promises a fully valid ``Config`` or raises ``ConfigErrors``
listing every problem found, each naming the file, the key and the fix.
``check_config`` returns the problems and warnings instead of raising, for
``shardctl validate``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping
from urllib.parse import urlparse

import platformdirs

from shardctl.errors import ConfigError
from shardctl.logs import dsn_passwords
from shardctl.markethours import AUTO, MarketHours

DEFAULT_SOURCE_URL = "wss://ws.twelvedata.com/v1/quotes/price"
DEFAULT_REST_URL = "https://api.twelvedata.com"
DEFAULT_API_KEY_ENV = "TWELVEDATA_API_KEY"
#: Twelve Data closes the oldest connection when a 4th opens with one key.
MAX_CONNECTIONS_PER_KEY = 3
#: The key the local feed accepts when no real key is configured.
LOCAL_FEED_API_KEY = "demo"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """Return seconds for ``"500ms"``, ``"2s"``, ``"1m"``, ``"1h"``, ``"1d"`` or a bare number of seconds.

    Raises ``ValueError`` with a message that shows the accepted forms.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like \"500ms\", \"2s\" or \"1m\", got {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise ValueError(f"a duration must be a finite number of seconds, got {text!r}")
        if text < 0:
            raise ValueError(f"a duration cannot be negative, got {text!r}")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration like \"500ms\", \"2s\" or \"1m\", got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


#: The smallest dead_letter_max_bytes: one dead letter may take about 26 KiB (see shardctl.journal.deadletters).
MIN_DEAD_LETTER_BYTES = 64 * 1024


#: What a journal at its cap does: stop reading the socket, or delete its oldest segments (counted as gaps).
OnFull = Literal["block", "drop_oldest"]
#: When the journal fsyncs: never (``write(2)`` only), on every flush, or after every append.
FsyncPolicy = Literal["never", "flush", "always"]


@dataclass(frozen=True)
class ShardSettings:
    """Per-shard tunables; ``[defaults]`` fills them, ``[shards.NAME]`` may override any."""

    batch_size: int = 1000
    #: Rows that may wait for the database in memory; past this the worker relies on the journal.
    max_pending_rows: int = 200_000
    flush_interval: float = 1.0
    heartbeat_interval: float = 10.0
    watchdog_timeout: float = 30.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    reconnect_reset_after: float = 60.0
    bad_key_backoff: float = 300.0
    stop_timeout: float = 10.0
    #: A graceful stop says goodbye on the websocket and reads what the server still sends for at most this long.
    stop_drain: float = 2.0
    dead_letter_log_interval: float = 10.0
    #: Cap of the dead-letter file; at the cap it is rotated to deadletters.jsonl.1 (at most twice this on disk).
    dead_letter_max_bytes: int = 8 * 1024 * 1024
    #: The shard's journal: segment size, cap, what happens at the cap, and fsync policy.
    journal_segment_bytes: int = 64 * 1024 * 1024
    journal_max_bytes: int = 2 * 1024 * 1024 * 1024
    journal_on_full: OnFull = "block"
    journal_fsync: FsyncPolicy = "never"
    #: Committed journal records are kept this long, to write them again if the database goes back in time.
    journal_retain: float = 300.0
    #: A symbol whose market is not closed and that has not ticked for this long is stale (status, /healthz).
    stale_after: float = 120.0
    #: "auto": crypto 24/7, others by Twelve Data's /market_state; "24/7": every symbol always trades;
    #: "forex" (weekend close) or an exchange's session ("XNYS", ...): see shardctl.markethours.
    market_hours: MarketHours = MarketHours(AUTO)
    #: How often "auto" fetches /market_state (one API credit a fetch, per shard).
    market_state_refresh: float = 300.0
    #: A symbol whose tick rate falls below this fraction of its own normal rate while its market is open is
    #: SLOW (0 turns it off); the normal rate is an exponentially weighted rate over ``slow_window``.
    slow_below: float = 0.1
    slow_window: float = 600.0


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


def parse_size(text: str | int) -> int:
    """Return bytes for ``"512MiB"``, ``"2GB"``, ``"64KiB"`` or a bare integer; ValueError shows the forms."""
    if isinstance(text, bool) or (isinstance(text, int) and text < 0):
        raise ValueError(f"expected a size like \"512MiB\" or \"2GiB\", got {text!r}")
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"expected a size like \"512MiB\" or \"2GiB\", got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*$")


def parse_host(text: object) -> str:
    """Return a bare host name or IP address, lower-cased, IPv6 without brackets (``"[FD00::1]"`` → ``"fd00::1"``).

    ValueError for anything else: a scheme, a port, a path, a wildcard, an empty string.
    """
    host = text.strip().lower() if isinstance(text, str) else ""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if len(host) > 253 or not _HOST_NAME.match(host):
        raise ValueError(f"{text!r} is not a host name or IP address; give bare names like \"shardctl.internal\" "
                         "(no scheme, port or wildcard)")
    return host


@dataclass(frozen=True)
class DatabaseConfig:
    """Where rows go: a literal DSN, an environment variable holding one, or (neither) the embedded server."""

    dsn: str | None = None
    dsn_env: str | None = None
    embedded_dir: Path = Path()

    @property
    def embedded(self) -> bool:
        return self.dsn is None and self.dsn_env is None


@dataclass(frozen=True)
class SourceConfig:
    url: str = DEFAULT_SOURCE_URL
    api_key_env: str = DEFAULT_API_KEY_ENV
    rest_url: str = DEFAULT_REST_URL

    @property
    def is_local(self) -> bool:
        """True when the source is a feed on this machine (``shardctl feed``)."""
        return urlparse(self.url).hostname in ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class FeedConfig:
    """A local ``shardctl feed`` that ``shardctl start`` runs beside the workers (demo mode)."""

    host: str = "127.0.0.1"
    port: int = 8765
    rate: float = 20.0
    symbols: tuple[str, ...] = ()


#: Candle intervals shardctl can keep (see shardctl.db.candlespec.candle_specs); "1d" is the tutorial's one_day_candle.
CANDLE_INTERVALS = ("1m", "1h", "1d")


@dataclass(frozen=True)
class BackfillConfig:
    """Filling recorded gaps with one-minute bars from Twelve Data's REST ``time_series``."""

    enabled: bool = False
    min_gap: float = 120.0
    credits_per_minute: int = 8
    dp: int = 10
    settle: float = 5.0
    max_attempts: int = 6
    rescan_interval: float = 60.0


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: the supervisor runs ``shardctl audit`` every ``interval`` over the last ``window`` (optional)."""

    interval: float = 3600.0
    window: float = 86400.0
    #: Ask REST about unexplained minutes (spends credits like backfill, ``backfill.credits_per_minute``).
    online: bool = False


@dataclass(frozen=True)
class TablesConfig:
    """Relation names (plain identifiers) and which candles to keep; ``[tables]`` in the config."""

    ticks: str = "crypto_ticks"
    assets: str = "crypto_assets"
    day_candle: str = "one_day_candle"
    ledger: str = "shardctl_ledger"
    minute_candle: str = "one_minute_candle"
    hour_candle: str = "one_hour_candle"
    #: Candle intervals to create and refresh, a subset of CANDLE_INTERVALS that includes "1d".
    candles: tuple[str, ...] = CANDLE_INTERVALS
    #: Real-time aggregation: candles include the still-open buckets (TimescaleDB materialized_only = false).
    realtime_candles: bool = False


#: The tutorial's (and TimescaleDB's) defaults: 7-day chunks, columnstore after 7 days.
DEFAULT_CHUNK_INTERVAL = 7 * 86400.0
DEFAULT_COLUMNSTORE_AFTER = 7 * 86400.0


@dataclass(frozen=True)
class TimescaleConfig:
    """``[timescaledb]``: hypertable and policy settings, applied by ``shardctl db init`` (and at start).

    Durations are seconds. Ignored on plain PostgreSQL. ``drop_after`` None keeps
    ticks forever; ``candle_drop_after`` maps a candle interval ("1m", "1h",
    "1d") to its retention, and an interval missing from it keeps its candles.
    """

    chunk_interval: float = DEFAULT_CHUNK_INTERVAL
    columnstore_after: float = DEFAULT_COLUMNSTORE_AFTER
    drop_after: float | None = None
    candle_drop_after: Mapping[str, float] = field(default_factory=dict)
    #: COPY batches of >= 1,000 rows straight into the columnstore (``timescaledb.enable_direct_compress_copy``,
    #: TimescaleDB >= 2.24 with continuous aggregates); on by default: benchmarks/README.md has the figures.
    direct_compress: bool = True


@dataclass(frozen=True)
class SupervisorConfig:
    control_socket: Path = Path()
    pidfile: Path = Path()
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    #: Variable holding the status page's token for its buttons; unset: a random token in STATE_DIR/run/status-token.
    status_token_env: str | None = None
    #: Host names the status page answers to besides metrics_host, localhost, 127.0.0.1 and ::1 (see parse_host).
    allowed_hosts: tuple[str, ...] = ()
    start_grace: float = 5.0
    heartbeat_timeout: float = 15.0
    restart_initial: float = 1.0
    restart_max: float = 60.0
    healthy_after: float = 30.0
    max_failures: int = 5
    failure_window: float = 300.0
    stop_timeout: float = 15.0
    #: /healthz answers 503 (not 200) while some symbol is stale.
    healthz_fails_on_stale: bool = False
    #: /healthz answers 503 (not 200) while some symbol is slow.
    healthz_fails_on_slow: bool = False


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: several hosts run the same config; a lease in the database says who streams each shard.

    ``host_id`` names this host in ``shardctl_hosts``/``shardctl_leases`` (unique per host).
    A standby takes a shard over after watching its owner's heartbeat stand still for
    ``lease_ttl`` while the database answers it; every host renews its heartbeat each
    ``renew_interval``. Absent section: single-host mode, no leases.
    """

    host_id: str
    lease_ttl: float = 8.0
    renew_interval: float = 1.0


@dataclass(frozen=True)
class ShardConfig:
    name: str
    symbols: tuple[str, ...]
    api_key_env: str
    settings: ShardSettings


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    database: DatabaseConfig
    source: SourceConfig
    tables: TablesConfig
    defaults: ShardSettings
    supervisor: SupervisorConfig
    shards: Mapping[str, ShardConfig] = field(default_factory=dict)
    feed: FeedConfig | None = None
    backfill: BackfillConfig = BackfillConfig()
    cluster: ClusterConfig | None = None
    timescaledb: TimescaleConfig = TimescaleConfig()
    audit: AuditConfig | None = None

    def shard(self, name: str) -> ShardConfig:
        """Return the named shard or raise a ConfigError that lists the known ones."""
        try:
            return self.shards[name]
        except KeyError:
            known = ", ".join(self.shards) or "none"
            raise ConfigError(str(self.path), f"shards.{name}", f"no such shard (known: {known})") from None

    def shard_dir(self, name: str) -> Path:
        """The shard's private state directory (dead letters, later the journal)."""
        return self.state_dir / "shards" / name

    def secrets(self) -> list[str]:
        """The credentials this config points at, as set now: every API key, the status token, the DSN password.

        Values come from the environment (and ``database.dsn``); the local
        feed's public key is not a secret. These are what logs must mask.
        """
        names = {self.source.api_key_env, *(shard.api_key_env for shard in self.shards.values()),
                 self.supervisor.status_token_env}
        values = [os.environ.get(name) for name in names if name]
        dsn = self.database.dsn or (os.environ.get(self.database.dsn_env) if self.database.dsn_env else None)
        return [v for v in values if v and v != LOCAL_FEED_API_KEY] + dsn_passwords(dsn)

    def api_key(self, shard: ShardConfig) -> str | None:
        """The shard's API key from the environment; the local feed's key when the source is local and none is set."""
        key = os.environ.get(shard.api_key_env)
        if not key and self.source.is_local:
            return LOCAL_FEED_API_KEY
        return key or None


def resolve_path(base: Path, value: str) -> Path:
    """``value`` with ~ expanded, made absolute against ``base`` when relative."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path).resolve()


def default_state_dir() -> Path:
    """``$SHARDCTL_STATE_DIR`` (made absolute against the working directory) or the user data dir."""
    env = os.environ.get("SHARDCTL_STATE_DIR")
    return resolve_path(Path.cwd(), env) if env else Path(platformdirs.user_data_dir("shardctl"))
