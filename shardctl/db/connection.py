"""Finding and connecting to the database, with errors a user can read.

Where the DSN comes from, first match wins:

1. ``$SHARDCTL_DSN`` (the supervisor hands the resolved DSN to its workers this way);
2. ``database.dsn`` in the config;
3. the environment variable named by ``database.dsn_env``;
4. the embedded server in ``database.embedded_dir`` (started if needed).

``connect`` turns psycopg2's errors into ``DatabaseUnavailable`` (cannot
reach the server: retry later) or ``DatabaseError`` (it answered "no": wrong
password, no such database, no rights), each one line with the DSN masked.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import quote

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import connection as Connection

from shardctl import logs
from shardctl.config.model import Config
from shardctl.db.embedded import EmbeddedPostgres
from shardctl.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    EmbeddedServerError,
)

#: The variable the supervisor sets for its workers; it overrides the config.
DSN_ENV = "SHARDCTL_DSN"
CONNECT_TIMEOUT = 5

# The userinfo of a URL runs to the LAST "@" before the host; a password may hold "/" or "@".
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^\s]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

# Connection-time messages that mean "the server answered: no" rather than "cannot reach it".
_REFUSED = re.compile(r"authentication failed|does not exist|no pg_hba\.conf entry|permission denied|"
                      r"password|not permitted|SSL .*(required|not supported)|certificate", re.IGNORECASE)
# SQLSTATE classes that mean "retry later": connection exceptions, insufficient resources,
# operator intervention (shutdown, cannot connect now), serialization failure / deadlock.
_RETRYABLE_STATES = ("08", "53", "57P", "40001", "40P01")


@dataclass(frozen=True)
class DsnTarget:
    """A resolved DSN and where it came from (``source``: for status lines, never holds a secret)."""

    dsn: str
    source: str
    embedded: EmbeddedPostgres | None = None
    started: bool = False


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` (URL or key=value form) with any password replaced by ``***``."""
    if "://" in dsn:
        return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", dsn))
    return _KV_PASSWORD.sub(r"\1***", dsn)


def dsn_to_uri(dsn: str, *, show_password: bool = False) -> str:
    """Return ``dsn`` as a ``postgresql://`` URI that psql accepts; the password is left out unless asked for.

    A unix-socket host (a path) goes in the ``host=`` query parameter.
    """
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise DatabaseError(f"cannot parse the database DSN {mask_dsn(dsn)}: {_first_line(exc)}") from None
    user = params.pop("user", "")
    password = params.pop("password", "")
    dbname = params.pop("dbname", "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    auth = ""
    if user:
        auth = quote(user, safe="")
        if password and show_password:
            auth += ":" + quote(password, safe="")
        auth += "@"
    query: list[tuple[str, str]] = []
    netloc = ""
    if host.startswith("/") or "," in host:
        query.append(("host", host))
        if port:
            query.append(("port", port))
    elif host:
        netloc = f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    elif port:
        query.append(("port", port))
    query.extend(sorted(params.items()))
    text = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query)
    return f"postgresql://{auth}{netloc}/{quote(dbname, safe='')}" + (f"?{text}" if text else "")


def resolve_target(config: Config, *, start_embedded: bool = True) -> DsnTarget:
    """Resolve the DSN (see the module docstring for the order) and say where it came from.

    Its password, if any, is registered for masking in every log line.
    Raises ConfigError (naming file and key) if ``database.dsn_env`` names an
    unset variable, and EmbeddedServerError if the embedded server is needed
    but does not run and ``start_embedded`` is False, or cannot start.
    """
    target = _resolve_target(config, start_embedded=start_embedded)
    logs.register_secrets(logs.dsn_passwords(target.dsn))
    return target


def _resolve_target(config: Config, *, start_embedded: bool) -> DsnTarget:
    env_dsn = os.environ.get(DSN_ENV)
    if env_dsn:
        return DsnTarget(env_dsn, f"${DSN_ENV}")
    db = config.database
    if db.dsn:
        return DsnTarget(db.dsn, "database.dsn")
    if db.dsn_env:
        value = os.environ.get(db.dsn_env)
        if not value:
            raise ConfigError(str(config.path), "database.dsn_env",
                              f"environment variable {db.dsn_env} is not set; export the database URL in it")
        return DsnTarget(value, f"${db.dsn_env}")
    server = EmbeddedPostgres(db.embedded_dir)
    if not start_embedded:
        dsn = server.dsn()
        if dsn is None:
            raise EmbeddedServerError(f"the embedded PostgreSQL in {server.data_dir} is not running; start it "
                                      f"with `shardctl db init {config.path}` or `shardctl start {config.path}`")
        return DsnTarget(dsn, "embedded", server, False)
    dsn, started = server.ensure_running()
    return DsnTarget(dsn, "embedded", server, started)


def resolve_dsn(config: Config, *, start_embedded: bool = True) -> str:
    """Return the DSN to use for ``config`` (see ``resolve_target``)."""
    return resolve_target(config, start_embedded=start_embedded).dsn


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of a psycopg2/libpq error message (they span several lines)."""
    text = str(getattr(exc, "pgerror", None) or exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def is_retryable(exc: BaseException, conn: Connection | None = None) -> bool:
    """True if ``exc`` means the database is (temporarily) out of reach, so the same work may be retried."""
    if conn is not None and getattr(conn, "closed", False):
        return True
    if isinstance(exc, psycopg2.InterfaceError):
        return True
    code = getattr(exc, "pgcode", None)
    if code:
        return code.startswith(_RETRYABLE_STATES)
    return isinstance(exc, psycopg2.OperationalError)


def map_error(exc: BaseException, dsn: str, *, action: str = "database error",
              conn: Connection | None = None) -> DatabaseError:
    """Turn a psycopg2 exception into DatabaseUnavailable (retryable) or DatabaseError, one line, DSN masked."""
    reason = mask_dsn(_first_line(exc))
    where = mask_dsn(dsn)
    if is_retryable(exc, conn):
        return DatabaseUnavailable(f"database unavailable ({where}): {reason}")
    return DatabaseError(f"{action} ({where}): {reason}")


#: Cluster mode, the client's side (libpq): a database that vanished without closing the socket is
#: noticed after 5 s idle + 3 probes 2 s apart (~11 s), or 10 s after data went unacknowledged.
CLUSTER_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                                      "keepalives_count": 3, "tcp_user_timeout": 10_000}
#: Cluster mode, the server's side of the same session (user-settable GUCs, sent as startup options):
#: the server drops the session of a host that vanished within the same bounds, so its locks (a batch
#: transaction cut in the middle holds the ledger and lease rows) are released and a takeover proceeds.
#: Both apply to TCP connections only; a unix socket does not vanish with a host.
CLUSTER_SERVER_OPTIONS = ("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
                          "-c tcp_user_timeout=10000")


def connect_params(dsn: str, *, application_name: str, cluster: bool = False) -> dict[str, Any]:
    """The keyword arguments ``connect`` adds to ``dsn``: what the DSN does not set itself.

    Always ``connect_timeout`` and TCP keepalives; with ``cluster`` the tighter
    ``CLUSTER_KEEPALIVES`` and, appended to any ``options`` the DSN has, ``CLUSTER_SERVER_OPTIONS``.
    Raises DatabaseError for a DSN that does not parse.
    """
    try:
        given = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise DatabaseError(f"invalid database DSN {mask_dsn(dsn)}: {_first_line(exc)}") from None
    extra: dict[str, Any] = {"application_name": application_name}
    defaults: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 30,
                                "keepalives_interval": 10, "keepalives_count": 3}
    if cluster:
        defaults.update(CLUSTER_KEEPALIVES)
        extra["options"] = f"{given.get('options', '')} {CLUSTER_SERVER_OPTIONS}".strip()
    extra.update({k: v for k, v in defaults.items() if k not in given})
    return extra


def connect(dsn: str, *, application_name: str = "shardctl", autocommit: bool = False,
            cluster: bool = False) -> Connection:
    """Open a psycopg2 connection to ``dsn``, or raise DatabaseUnavailable / DatabaseError (one line, masked).

    Adds ``connect_timeout`` and TCP keepalives unless the DSN sets them, so a
    dead server or a half-open connection is noticed instead of hanging
    (``cluster``: the tighter bounds of ``CLUSTER_KEEPALIVES``, both ends).
    """
    extra = connect_params(dsn, application_name=application_name, cluster=cluster)
    try:
        conn = psycopg2.connect(dsn, **extra)
    except psycopg2.OperationalError as exc:
        reason = mask_dsn(_first_line(exc))
        if _REFUSED.search(reason):
            raise DatabaseError(f"the database refused the connection ({mask_dsn(dsn)}): {reason}") from None
        raise DatabaseUnavailable(f"cannot reach the database ({mask_dsn(dsn)}): {reason}") from None
    except psycopg2.Error as exc:
        raise DatabaseError(f"cannot connect to the database ({mask_dsn(dsn)}): {mask_dsn(_first_line(exc))}"
                            ) from None
    conn.autocommit = autocommit
    return conn


@contextmanager
def transaction(conn: Connection, action: str | None = None) -> Iterator[Any]:
    """Run the block in one committed transaction on ``conn``; roll back on error; autocommit restored.

    Commits a transaction the caller left open on a non-autocommit
    connection. With ``action``, psycopg2 errors become DatabaseError /
    DatabaseUnavailable with one masked line ("<action>: ...").
    """
    was_autocommit = conn.autocommit
    if was_autocommit:
        conn.autocommit = False
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except psycopg2.Error as exc:
        if not conn.closed:
            conn.rollback()
        if action is None:
            raise
        raise map_error(exc, conn.dsn, action=action, conn=conn) from None
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    finally:
        if was_autocommit and not conn.closed:
            conn.autocommit = True


def scalar(cur: psycopg2.extensions.cursor, query: str, params: Any = None) -> Any:
    """The first column of the first row ``query`` returns; DatabaseError when it returns no row."""
    cur.execute(query, params)
    row = cur.fetchone()
    if row is None:
        raise DatabaseError(f"no row from: {query[:80]}")
    return row[0]
