"""Reading a config file: the raw TOML tree → ``Config``, collecting every problem on the way.

``read_config`` never raises for bad input: each problem (and warning, and
unset environment variable) is a ``ConfigError`` naming the file, the key and
the fix, collected on the returned reader. ``shardctl.config.check_config``
and ``load_config`` are the public entry points.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlparse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from shardctl.config.cluster import CLUSTER_KEYS, check_cluster_keys, read_cluster
from shardctl.config.model import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_REST_URL,
    DEFAULT_SOURCE_URL,
    MAX_CONNECTIONS_PER_KEY,
    AuditConfig,
    BackfillConfig,
    Config,
    FeedConfig,
    ShardConfig,
    ShardSettings,
    SourceConfig,
    SupervisorConfig,
    TablesConfig,
    default_state_dir,
    parse_host,
    resolve_path,
)
from shardctl.config.storage import TIMESCALEDB_KEYS, read_database, read_tables, read_timescaledb
from shardctl.config.values import TOP_KEYS, ValueReader

_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "database": ("dsn", "dsn_env", "embedded_dir"),
    "source": ("url", "api_key_env", "rest_url"),
    "feed": ("host", "port", "rate", "symbols"),
    "tables": tuple(f.name for f in fields(TablesConfig)),
    "timescaledb": TIMESCALEDB_KEYS,
    "defaults": tuple(f.name for f in fields(ShardSettings)),
    "supervisor": tuple(f.name for f in fields(SupervisorConfig)),
    "backfill": tuple(f.name for f in fields(BackfillConfig)),
    "cluster": CLUSTER_KEYS,
    "audit": tuple(f.name for f in fields(AuditConfig)),
}
_SHARD_KEYS = ("symbols", "api_key_env") + _SECTION_KEYS["defaults"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def read_config(path: Path) -> tuple[Config | None, ValueReader]:
    """Convert the file at ``path``; the reader holds problems, warnings and unset variables."""
    reader = ValueReader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        reader.problem("", "file not found; pass the path of a TOML config (see config/demo.toml)")
        return None, reader
    except OSError as exc:
        reader.problem("", f"cannot read the file: {exc.strerror}")
        return None, reader
    except UnicodeDecodeError as exc:
        reader.problem("", f"not a UTF-8 text file (byte {exc.start}); a config is a TOML text file")
        return None, reader
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reader.problem("", f"TOML syntax error: {exc}; fix the line it names")
        return None, reader

    base = path.parent.resolve()
    reader.unknown_keys(raw, TOP_KEYS, "")
    for section, allowed in _SECTION_KEYS.items():
        if isinstance(raw.get(section), dict):  # a non-table is reported once, where the section is read
            reader.unknown_keys(raw[section], allowed, section)

    state_value = reader.string(raw, "state_dir", "state_dir", None)
    # $SHARDCTL_STATE_DIR wins over state_dir; a relative state_dir is relative to this file.
    state_dir = default_state_dir() if os.environ.get("SHARDCTL_STATE_DIR") or not state_value else (
        resolve_path(base, state_value))

    database = read_database(reader, reader.table(raw, "database"), base, state_dir)

    src_raw = reader.table(raw, "source")
    source = SourceConfig(
        url=reader.string(src_raw, "url", "source.url", DEFAULT_SOURCE_URL) or DEFAULT_SOURCE_URL,
        api_key_env=reader.string(src_raw, "api_key_env", "source.api_key_env", DEFAULT_API_KEY_ENV)
        or DEFAULT_API_KEY_ENV,
        rest_url=reader.string(src_raw, "rest_url", "source.rest_url", None) or "",
    )
    if not source.rest_url:
        # A local feed serves REST on its websocket port; otherwise Twelve Data's API.
        local = urlparse(source.url)
        rest_url = f"http://{local.netloc}" if source.is_local else DEFAULT_REST_URL
        source = SourceConfig(url=source.url, api_key_env=source.api_key_env, rest_url=rest_url)
    url = urlparse(source.url)
    if "apikey" in url.query.lower():
        # Never echo the URL: it holds a secret (and `validate` would print it).
        reader.problem("source.url", f"holds an API key (?apikey=...); remove it and export the key in "
                                     f"${source.api_key_env} (or the variable named by api_key_env)")
    elif url.scheme not in ("ws", "wss"):
        reader.problem("source.url", f"must be a ws:// or wss:// URL, got {source.url!r}")

    tables = read_tables(reader, reader.table(raw, "tables"))
    timescaledb = read_timescaledb(reader, reader.table(raw, "timescaledb"), tables)

    defaults = reader.settings(reader.table(raw, "defaults"), "defaults", ShardSettings())
    supervisor = _read_supervisor(reader, reader.table(raw, "supervisor"), base, state_dir)
    shards = _read_shards(reader, raw, source, defaults)
    feed = _read_feed(reader, raw, shards) if "feed" in raw else None
    if feed is not None:
        _check_feed_matches_source(reader, feed, source)

    backfill = _read_backfill(reader, reader.table(raw, "backfill"))
    config = Config(path=path, state_dir=state_dir, database=database, source=source, tables=tables,
                    defaults=defaults, supervisor=supervisor, shards=MappingProxyType(shards), feed=feed,
                    backfill=backfill, timescaledb=timescaledb,
                    cluster=read_cluster(reader, reader.table(raw, "cluster")) if "cluster" in raw else None,
                    audit=_read_audit(reader, reader.table(raw, "audit")) if "audit" in raw else None)
    _check_api_keys(reader, config)
    check_cluster_keys(reader, config)
    return config, reader


def _read_supervisor(reader: ValueReader, raw: Mapping[str, Any], base: Path, state_dir: Path) -> SupervisorConfig:
    values: dict[str, Any] = {}
    for f in fields(SupervisorConfig):
        where = f"supervisor.{f.name}"
        default: Any = f.default  # every SupervisorConfig field has one
        if f.name in ("control_socket", "pidfile"):
            value = reader.string(raw, f.name, where, None)
            default = state_dir / "run" / ("control.sock" if f.name == "control_socket" else "shardctl.pid")
            values[f.name] = resolve_path(base, value) if value else default
        elif f.name == "metrics_host":
            values[f.name] = reader.string(raw, f.name, where, default)
        elif f.name == "metrics_port":
            values[f.name] = reader.number(raw, f.name, where, 0, integer=True, minimum=0)
            if values[f.name] > 65535:
                reader.problem(where, "must be a TCP port (1-65535), or 0 to turn metrics off")
        elif f.name == "max_failures":
            values[f.name] = reader.number(raw, f.name, where, default, integer=True, minimum=1)
        elif f.name == "allowed_hosts":
            values[f.name] = _read_hosts(reader, raw.get(f.name, []), where)
        elif f.name in ("healthz_fails_on_stale", "healthz_fails_on_slow"):
            values[f.name] = raw.get(f.name, default)
            if not isinstance(values[f.name], bool):
                reader.problem(where, f"must be true or false, got {values[f.name]!r}")
                values[f.name] = default
        elif f.name == "status_token_env":
            values[f.name] = reader.string(raw, f.name, where, None)
            if values[f.name] and not _ENV_NAME.match(values[f.name]):
                reader.problem(where, f"{values[f.name]!r} is not an environment variable name (letters, digits, _)")
        else:
            values[f.name] = reader.duration(raw, f.name, where, default)
    sock = values["control_socket"]
    if len(str(sock)) > 100:
        # Only the supervisor binds it (workers and one-off commands never do): a warning here,
        # an error from `shardctl start`.
        reader.warn("supervisor.control_socket",
                    f"path is {len(str(sock))} characters; unix sockets allow about 100: choose a shorter one "
                    "before `shardctl start`")
    return SupervisorConfig(**values)


def _read_hosts(reader: ValueReader, value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        reader.problem(where, 'must be a list of host names, e.g. ["shardctl.internal"]')
        return ()
    hosts: list[str] = []
    for item in value:
        try:
            hosts.append(parse_host(item))
        except ValueError as exc:
            reader.problem(where, str(exc))
    return tuple(hosts)


def _read_backfill(reader: ValueReader, raw: Mapping[str, Any]) -> BackfillConfig:
    default = BackfillConfig()
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        reader.problem("backfill.enabled", f"must be true or false, got {enabled!r}")
        enabled = False
    return BackfillConfig(
        enabled=enabled,
        min_gap=reader.duration(raw, "min_gap", "backfill.min_gap", default.min_gap),
        credits_per_minute=reader.number(raw, "credits_per_minute", "backfill.credits_per_minute",
                                         default.credits_per_minute, integer=True, minimum=1),
        dp=reader.number(raw, "dp", "backfill.dp", default.dp, integer=True, minimum=0),
        settle=reader.duration(raw, "settle", "backfill.settle", default.settle),
        max_attempts=reader.number(raw, "max_attempts", "backfill.max_attempts", default.max_attempts,
                                   integer=True, minimum=1),
        rescan_interval=reader.duration(raw, "rescan_interval", "backfill.rescan_interval",
                                        default.rescan_interval),
    )


def _read_audit(reader: ValueReader, raw: Mapping[str, Any]) -> AuditConfig:
    default = AuditConfig()
    online = raw.get("online", default.online)
    if not isinstance(online, bool):
        reader.problem("audit.online", f"must be true or false, got {online!r}")
        online = default.online
    return AuditConfig(interval=reader.duration(raw, "interval", "audit.interval", default.interval),
                       window=reader.duration(raw, "window", "audit.window", default.window), online=online)


def _read_shards(reader: ValueReader, raw: Mapping[str, Any], source: SourceConfig,
                 defaults: ShardSettings) -> dict[str, ShardConfig]:
    shards_raw = raw.get("shards")
    if shards_raw is None:
        reader.problem("shards", "missing; add at least one [shards.NAME] table with symbols = [...]")
        return {}
    if not isinstance(shards_raw, dict) or not shards_raw:
        reader.problem("shards", "must hold at least one [shards.NAME] table with symbols = [...]")
        return {}
    shards: dict[str, ShardConfig] = {}
    owner: dict[str, str] = {}
    for name, body in shards_raw.items():
        prefix = f"shards.{name}"
        if not _SHARD_NAME.match(name):
            reader.problem(prefix, "shard names use letters, digits, '-' and '_' (at most 32 characters)")
        if not isinstance(body, dict):
            reader.problem(prefix, "must be a table with symbols = [...]")
            continue
        reader.unknown_keys(body, _SHARD_KEYS, prefix)
        symbols = body.get("symbols")
        if not isinstance(symbols, list) or not symbols:
            reader.problem(f"{prefix}.symbols", "a shard needs at least one symbol, e.g. symbols = [\"BTC/USD\"]")
            symbols = []
        clean: list[str] = []
        for symbol in symbols:
            if not isinstance(symbol, str) or not symbol.strip() or "," in symbol:
                reader.problem(f"{prefix}.symbols", f"{symbol!r} is not a symbol like \"AAPL\" or \"BTC/USD\"")
                continue
            symbol = symbol.strip()
            if symbol in owner:
                where = "twice in this shard" if owner[symbol] == name else f"also in shards.{owner[symbol]}"
                reader.problem(f"{prefix}.symbols", f"{symbol!r} is {where}; a symbol belongs to one shard")
                continue
            owner[symbol] = name
            clean.append(symbol)
        key_env = reader.string(body, "api_key_env", f"{prefix}.api_key_env", source.api_key_env)
        settings = reader.settings(body, prefix, defaults)
        shards[name] = ShardConfig(name=name, symbols=tuple(clean), api_key_env=key_env or source.api_key_env,
                                   settings=settings)
    return shards


def _read_feed(reader: ValueReader, raw: Mapping[str, Any], shards: Mapping[str, ShardConfig]) -> FeedConfig:
    body = reader.table(raw, "feed")
    port = reader.number(body, "port", "feed.port", 8765, integer=True, minimum=1)
    if port > 65535:
        reader.problem("feed.port", "must be a TCP port (1-65535)")
    host = reader.string(body, "host", "feed.host", "127.0.0.1") or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        reader.problem("feed.host", "the local feed listens on 127.0.0.1 only")
    rate = reader.number(body, "rate", "feed.rate", 20.0, integer=False, minimum=0.001)
    symbols = body.get("symbols")
    if symbols is None:
        symbols = [s for shard in shards.values() for s in shard.symbols]
    elif not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        reader.problem("feed.symbols", "must be a list of symbols")
        symbols = []
    return FeedConfig(host=host, port=port, rate=float(rate), symbols=tuple(symbols))


def _check_feed_matches_source(reader: ValueReader, feed: FeedConfig, source: SourceConfig) -> None:
    """`start` runs the [feed]; warn when the workers would not read from it."""
    url = urlparse(source.url)
    if not source.is_local:
        reader.warn("feed", f"a local feed will run, but source.url points at {url.hostname}; "
                            "remove [feed] or set source.url to ws://127.0.0.1:PORT/v1/quotes/price")
        return
    try:
        port = url.port or (443 if url.scheme == "wss" else 80)
    except ValueError:
        return
    if port != feed.port:
        reader.warn("feed.port", f"the feed listens on port {feed.port} but source.url uses port {port}; "
                                 "make them the same")


def _check_api_keys(reader: ValueReader, config: Config) -> None:
    by_key: dict[str, list[str]] = {}
    for shard in config.shards.values():
        by_key.setdefault(shard.api_key_env, []).append(shard.name)
    for env, names in by_key.items():
        if len(names) > MAX_CONNECTIONS_PER_KEY:
            reader.problem(
                f"shards.{names[MAX_CONNECTIONS_PER_KEY]}.api_key_env",
                f"{len(names)} shards ({', '.join(names)}) share the API key in ${env}; Twelve Data allows "
                f"{MAX_CONNECTIONS_PER_KEY} connections per key and closes the oldest: give some shards their "
                f"own api_key_env or merge shards")
        if not config.source.is_local and not os.environ.get(env):
            first = names[0]
            key = "source.api_key_env" if env == config.source.api_key_env else f"shards.{first}.api_key_env"
            reader.env_missing(key, f"environment variable {env} is not set; export your Twelve Data API key in it "
                             f"before `shardctl start` (needed by shard(s) {', '.join(names)})")
    token_env = config.supervisor.status_token_env
    if token_env and config.supervisor.metrics_port and not os.environ.get(token_env):
        reader.env_missing("supervisor.status_token_env", f"environment variable {token_env} is not set; export the "
                           "status page's token in it, or remove the key to have one generated in run/status-token")
    if config.database.dsn_env and not os.environ.get(config.database.dsn_env):
        reader.env_missing("database.dsn_env", f"environment variable {config.database.dsn_env} is not set; "
                                        "export the database URL in it before `shardctl start`")
