"""Grafana provisioning: the YAML and dashboard JSON parse, use the provisioned data source, and every panel
query runs against a shardctl database and returns the columns its panel needs."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from shardctl.config.model import TablesConfig
from shardctl.db.candles import refresh_range
from shardctl.db.connection import connect
from shardctl.db.schema import upsert_assets

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "shardctl.yaml"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "shardctl.yaml"
DASHBOARD = GRAFANA / "dashboards" / "shardctl.json"
UID = "shardctl-pg"
CANDLE_COLUMNS = ["time", "open", "high", "low", "close", "volume"]


def _scalar(text: str) -> Any:
    if text[:1] in "\"'":
        return text[1:-1]
    return {"true": True, "false": False}.get(text, int(text) if re.fullmatch(r"-?\d+", text) else text)


def parse_yaml(text: str) -> Any:
    """A minimal YAML reader for the provisioning files (block maps, lists of maps, scalars; no flow style)."""
    lines = [(len(ln) - len(ln.lstrip(" ")), ln.strip()) for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                lines[i] = (indent + 2, lines[i][1][2:])
                item, i = block(i, indent + 2)
                items.append(item)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            key, _, rest = lines[i][1].partition(":")
            rest = rest.strip()
            if rest:
                mapping[key], i = _scalar(rest), i + 1
            else:
                mapping[key], i = block(i + 1, lines[i + 1][0])
        return mapping, i

    value, end = block(0, lines[0][0])
    assert end == len(lines), f"unparsed line: {lines[end][1]!r}"
    return value


def load_yaml(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    value = parse_yaml(text)
    try:
        import yaml
    except ImportError:
        return value
    assert yaml.safe_load(text) == value  # the minimal reader agrees with PyYAML
    return value


def test_datasource_provisioning() -> None:
    config = load_yaml(DATASOURCE)
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert source["type"] == "grafana-postgresql-datasource" and source["uid"] == UID
    assert source["jsonData"]["timescaledb"] is True
    assert source["jsonData"]["database"] == "${SHARDCTL_PGDATABASE}" and source["user"] == "${SHARDCTL_PGUSER}"
    assert source["url"] == "${SHARDCTL_PGHOST}:${SHARDCTL_PGPORT}"
    assert source["secureJsonData"] == {"password": "${SHARDCTL_PGPASSWORD}"}
    assert "password" not in source and "password" not in source["jsonData"]


def test_dashboard_provider() -> None:
    config = load_yaml(PROVIDER)
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_uses_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    sources = [p["datasource"] for p in dashboard["panels"]]
    sources += [t["datasource"] for p in dashboard["panels"] for t in p["targets"]]
    sources += [v["datasource"] for v in dashboard["templating"]["list"]]
    assert sources and all(s == {"type": "grafana-postgresql-datasource", "uid": UID} for s in sources)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["symbol"]
    candles = [p for p in dashboard["panels"] if p["type"] == "candlestick"]
    assert sorted(t["rawSql"].split(" FROM ")[1].split()[0] for p in candles for t in p["targets"]) == [
        "one_day_candle", "one_hour_candle", "one_minute_candle"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def grafana_to_sql(query: str, symbol: str = "BTC/USD") -> str:
    """Expand the Grafana macros and variables the dashboard uses, as Grafana would for a 30-day range."""
    query = re.sub(r"\$__timeFilter\(([^)]*)\)", r"\1 BETWEEN now() - interval '30 days' AND now()", query)
    query = query.replace("$symbol", symbol)
    assert "$" not in query, query
    return query


def _run(dsn: str, query: str) -> tuple[list[str], list[tuple]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return [d.name for d in cur.description], cur.fetchall()
    finally:
        conn.rollback()
        conn.close()


@pytest.fixture
def dsn_with_ticks(schema_dsn: str, tables: TablesConfig) -> str:
    now = datetime.now(timezone.utc)
    rows = [(now - timedelta(minutes=17 * i), sym, 100.0 + i, i) for i in range(1, 200) for sym in ("BTC/USD", "X")]
    conn = connect(schema_dsn)
    try:
        with conn.cursor() as cur:
            cur.executemany('INSERT INTO crypto_ticks ("time", symbol, price, day_volume) VALUES (%s, %s, %s, %s)',
                            rows)
        conn.commit()
        upsert_assets(conn, tables, {"BTC/USD": "Bitcoin"})
        refresh_range(conn, tables, now - timedelta(days=4), now + timedelta(days=1))  # either flavour
    finally:
        conn.close()
    return schema_dsn


def test_every_panel_query_runs(dsn_with_ticks: str) -> None:
    dashboard = _dashboard()
    for variable in dashboard["templating"]["list"]:
        columns, rows = _run(dsn_with_ticks, grafana_to_sql(variable["query"]))
        assert len(columns) == 1 and ("BTC/USD",) in rows and ("X",) in rows
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            columns, rows = _run(dsn_with_ticks, grafana_to_sql(target["rawSql"]))
            assert rows, panel["title"]
            if panel["type"] == "candlestick":
                assert columns == CANDLE_COLUMNS, panel["title"]
                assert all(isinstance(r[0], datetime) for r in rows)
            elif panel["type"] == "timeseries":
                assert columns[0] == "time" and isinstance(rows[0][1], int)
            else:
                assert columns == ["symbol", "lag_seconds"] and {r[0] for r in rows} == {"BTC/USD", "X"}
