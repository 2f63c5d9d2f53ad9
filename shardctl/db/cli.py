"""``shardctl db``: init, status, url and stop for the configured database.

One-off commands start the embedded server when the config uses it and
leave it running, saying so on stderr (see ``shardctl.db.embedded``). Every
failure is a ShardctlError: one line, exit 1 (runtime) or 2 (config).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from shardctl.config import load_config
from shardctl.config.model import Config, TablesConfig
from shardctl.db.connection import (
    DsnTarget,
    connect,
    dsn_to_uri,
    map_error,
    mask_dsn,
    resolve_target,
    scalar,
)
from shardctl.db.embedded import EmbeddedPostgres
from shardctl.db.policies import describe
from shardctl.db.schema import SCHEMA_VERSION, apply_schema, recorded_schema
from shardctl.errors import EXIT_OK, EXIT_RUNTIME, EmbeddedServerError

_COUNT_TIMEOUT_MS = 5000


def _target(config: Config, *, start: bool) -> DsnTarget:
    """Resolve the DSN; if this started the embedded server, say so on stderr (it stays running)."""
    target = resolve_target(config, start_embedded=start)
    if target.started and target.embedded is not None:
        print(f"embedded PostgreSQL started in {target.embedded.data_dir}; stop it with "
              f"`shardctl db stop {config.path}`", file=sys.stderr)
    return target


def _where(target: DsnTarget) -> str:
    if target.embedded is not None:
        return f"embedded PostgreSQL in {target.embedded.data_dir} (pid {target.embedded.pid()})"
    return f"{mask_dsn(target.dsn)} (from {target.source})"


def cmd_init(args: argparse.Namespace) -> int:
    """Apply the schema and ``[timescaledb]``; print the flavour, the tables, every candle relation and policy."""
    config = load_config(args.config)
    target = _target(config, start=True)
    conn = connect(target.dsn, application_name="shardctl db init")
    try:
        flavour = apply_schema(conn, config.tables, config.timescaledb)
        lines = describe(conn, config.tables, flavour)
    except psycopg2.Error as exc:
        raise map_error(exc, target.dsn, action="cannot read the policies", conn=conn) from None
    finally:
        conn.close()
    t = config.tables
    kind = "hypertable" if flavour == "timescaledb" else "partitioned by day"
    print(f"schema ready on {_where(target)}: flavour {flavour}, schema version {SCHEMA_VERSION}")
    print(f"  {t.ticks} ({kind}), {t.assets}, {t.ledger}")
    for line in lines:
        print(f"  {line}")
    return EXIT_OK


def _count(cur: Any, table: str) -> str:
    """Exact row count, or the planner's estimate (marked ~) if counting takes longer than 5 s."""
    ident = sql.Identifier(table)
    cur.execute("SAVEPOINT count_rows")
    try:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
        result = str(cur.fetchone()[0])
        cur.execute("RELEASE SAVEPOINT count_rows")
        return result
    except psycopg2.errors.QueryCanceled:
        cur.execute("ROLLBACK TO SAVEPOINT count_rows")
    cur.execute("""SELECT COALESCE(SUM(GREATEST(c.reltuples, 0)), 0)::bigint FROM pg_class c
                   WHERE c.oid = to_regclass(%s)
                      OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass(%s))""",
                (ident.as_string(cur), ident.as_string(cur)))
    return f"~{cur.fetchone()[0]} (estimate)"


def _status_lines(conn: Connection, tables: TablesConfig) -> list[str]:
    recorded = recorded_schema(conn, tables)
    if recorded is None:
        return []
    flavour, version = recorded
    lines = [f"flavour: {flavour}, schema version {version}"]
    with conn.cursor() as cur:
        cur.execute("SET LOCAL statement_timeout = %s", (_COUNT_TIMEOUT_MS,))
        for table in (tables.ticks, tables.assets, tables.day_candle):
            lines.append(f"{table}: {_count(cur, table)} rows")
        cur.execute(sql.SQL("SELECT shard, last_seq, rows_total, journal_offset, updated_at FROM {} ORDER BY shard")
                    .format(sql.Identifier(tables.ledger)))
        ledger = cur.fetchall()
    conn.rollback()
    lines += describe(conn, tables, flavour)
    if not ledger:
        lines.append(f"{tables.ledger}: no batches committed yet")
    for shard, seq, total, offset, updated in ledger:
        offset_text = "-" if offset is None else str(offset)
        lines.append(f"{tables.ledger}: shard {shard}: last_seq {seq}, rows {total}, journal_offset {offset_text}, "
                     f"updated {updated:%Y-%m-%d %H:%M:%S%z}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """Print where the server is, the schema flavour/version, row counts and the per-shard ledger."""
    config = load_config(args.config)
    target = resolve_target(config, start_embedded=False)  # status never starts a server
    conn = connect(target.dsn, application_name="shardctl db status")
    try:
        print(f"server: {_where(target)}")
        with conn.cursor() as cur:
            print(f"postgresql: {scalar(cur, 'SHOW server_version')}")
        conn.rollback()
        lines = _status_lines(conn, config.tables)
    except psycopg2.Error as exc:
        raise map_error(exc, target.dsn, action="cannot read the status", conn=conn) from None
    finally:
        conn.close()
    if not lines:
        print(f"schema: not initialised; run `shardctl db init {config.path}`")
        return EXIT_RUNTIME
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_url(args: argparse.Namespace) -> int:
    """Print the database URI (for psql); the password only with --show-password."""
    config = load_config(args.config)
    target = _target(config, start=True)
    uri = dsn_to_uri(target.dsn, show_password=args.show_password)
    print(uri)
    if not args.show_password and psycopg2.extensions.parse_dsn(target.dsn).get("password"):
        print("note: the password is left out; add --show-password to include it", file=sys.stderr)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the embedded server of this config (fast shutdown: open transactions roll back)."""
    config = load_config(args.config)
    if not config.database.embedded:
        key = "database.dsn" if config.database.dsn else "database.dsn_env"
        raise EmbeddedServerError(f"{config.path} uses an external database ({key}); shardctl only stops the "
                                  f"embedded server it runs")
    server = EmbeddedPostgres(config.database.embedded_dir)
    if server.stop():
        print(f"embedded PostgreSQL in {server.data_dir} stopped")
    else:
        print(f"embedded PostgreSQL in {server.data_dir} is not running")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``shardctl db {init,status,url,stop} CONFIG``."""
    db = subparsers.add_parser("db", help="manage the database: init, status, url, stop")
    sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    for name, func, text in (
        ("init", cmd_init, "create the tables (idempotent); starts the embedded server if needed"),
        ("status", cmd_status, "show the server, schema version, row counts and per-shard ledger"),
        ("url", cmd_url, "print the database URI (starts the embedded server if needed), "
                         "e.g. psql \"$(shardctl db url CONFIG)\""),
        ("stop", cmd_stop, "stop the embedded PostgreSQL server"),
    ):
        parser = sub.add_parser(name, help=text, description=text)
        parser.add_argument("config", help="path of the TOML config")
        if name == "url":
            parser.add_argument("--show-password", action="store_true", help="include the password in the URI")
        parser.set_defaults(func=func)
