"""``shardctl init`` and ``shardctl demo``, and the wheel: built from this tree, installed into a fresh
virtual environment outside the repository, run from there (demo to first rows, init, validate, db init)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from support import query, terminate_all, wait_until

from shardctl.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARDCTL = [sys.executable, "-m", "shardctl"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- init

def test_init_writes_a_commented_config_that_validates_and_holds_no_key(tmp_path: Path) -> None:
    secret = "td-secret-key-1234"
    printed = run([*SHARDCTL, "init"], env={"TWELVEDATA_API_KEY": secret})
    assert printed.returncode == 0 and printed.stdout.startswith("# shardctl: a starting config")
    assert 'api_key_env = "TWELVEDATA_API_KEY"' in printed.stdout and secret not in printed.stdout

    path = tmp_path / "etc" / "shardctl.toml"
    made = run([*SHARDCTL, "init", str(path)], env={"TWELVEDATA_API_KEY": secret})
    assert made.returncode == 0 and f"wrote {path}" in made.stdout
    assert path.read_text() == printed.stdout and oct(path.stat().st_mode & 0o777) == "0o644"

    # As written, it passes validate: with the key exported, not even a warning; without it, a warning only.
    with_key = run([*SHARDCTL, "validate", str(path)], env={"TWELVEDATA_API_KEY": secret})
    assert with_key.returncode == 0 and with_key.stderr == "" and ": OK: 1 shard(s), 3 symbol(s)" in with_key.stdout
    clean = {k: v for k, v in os.environ.items() if k != "TWELVEDATA_API_KEY"}
    without = subprocess.run([*SHARDCTL, "validate", str(path)], check=False, capture_output=True, text=True, env=clean,
                             timeout=60)
    assert without.returncode == 0 and "TWELVEDATA_API_KEY is not set" in without.stderr
    config = load_config(path)
    assert config.source.url.startswith("wss://ws.twelvedata.com") and config.database.embedded


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("# my own config\n")
    refused = run([*SHARDCTL, "init", str(path)])
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"shardctl: error: {path} already exists; pass --force to overwrite it, "
                                      "or name another file")
    assert path.read_text() == "# my own config\n"
    forced = run([*SHARDCTL, "init", str(path), "--force"])
    assert forced.returncode == 0 and path.read_text().startswith("# shardctl: a starting config")


def test_the_packaged_demo_config_is_the_repositorys() -> None:
    printed = run([*SHARDCTL, "demo", "--print-config"])
    assert printed.returncode == 0 and printed.stdout == (REPO / "config" / "demo.toml").read_text()
    moved = run([*SHARDCTL, "demo", "--print-config", "--feed-port", "18001", "--metrics-port", "18002"])
    assert "ws://127.0.0.1:18001/" in moved.stdout and "\nport = 18001" in moved.stdout
    assert "\nmetrics_port = 18002" in moved.stdout and "8765" not in moved.stdout.split("[source]")[1]


def test_feed_log_lines_say_feed(tmp_path: Path) -> None:
    log = tmp_path / "feed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*SHARDCTL, "feed", "--port", "0", "--rate", "1"], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "REST" in log.read_text(), 20, what="the feed's start lines")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    assert lines and all(" [feed] " in ln for ln in lines), lines


# ---------------------------------------------------------------- the wheel, in a fresh venv

@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the repository with the wheel built from this tree (and its dependencies) installed."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                 str(REPO), "-w", str(dist)], cwd=base, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(dist.glob("shardctl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("shardctl/examples/demo.toml", "shardctl/examples/starter.toml",
                    "shardctl/sql/postgresql/tables.sql", "shardctl/supervisor/http/static/statuspage.js"):
        assert shipped in names, f"{shipped} is not in {wheel.name}"
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    installed = run([str(env_dir / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                    cwd=base, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env_dir


def _outside_env(state_dir: Path) -> dict[str, str]:
    """The environment for the installed CLI: no trace of this checkout, a private state directory."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SHARDCTL_CONFIG", "SHARDCTL_DSN", "TWELVEDATA_API_KEY")}
    return {**env, "SHARDCTL_STATE_DIR": str(state_dir), "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture
def demo_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    terminate_all(started)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_in_a_fresh_venv_runs_the_demo_init_validate_and_db_init(
        wheel_venv: Path, server_dir: Path, tmp_path: Path, fresh_dsn: str,
        demo_procs: list[subprocess.Popen[bytes]]) -> None:
    shardctl = str(wheel_venv / "bin" / "shardctl")
    work = tmp_path / "outside"  # not the repository: nothing from the clone is importable or readable
    work.mkdir()
    env = _outside_env(server_dir)
    where = run([str(wheel_venv / "bin" / "python"), "-c", "import shardctl; print(shardctl.__file__)"],
                cwd=work, env=env)
    assert str(wheel_venv) in where.stdout and str(REPO) not in where.stdout

    # shardctl demo: to first rows.
    feed_port, metrics_port = free_port(), free_port()
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    started = time.monotonic()
    with open(out, "wb") as o, open(err, "wb") as e:
        demo = subprocess.Popen([shardctl, "demo", "--feed-port", str(feed_port), "--metrics-port",
                                 str(metrics_port)], stdout=o, stderr=e, cwd=work, env=env)
    demo_procs.append(demo)

    def announced() -> bool:
        if demo.poll() is not None:
            raise AssertionError(f"demo exited {demo.returncode}:\n{err.read_text()[-3000:]}")
        return "status page: http://127.0.0.1:" in out.read_text()

    wait_until(announced, 120, what="the demo's status page line")
    assert f"status page: http://127.0.0.1:{metrics_port}/" in out.read_text()

    def rows() -> int:
        status = run([shardctl, "status", "--json"], cwd=work, env=env)
        if status.returncode != 0:
            return 0
        return sum(int(s.get("rows_written") or 0) for s in json.loads(status.stdout)["shards"])

    wait_until(rows, 60, what="the demo's first rows")
    first_rows = time.monotonic() - started
    demo_config = server_dir / "demo.toml"
    dsn = run([shardctl, "db", "url", str(demo_config)], cwd=work, env=env).stdout.strip()
    assert query(dsn, "SELECT count(*) FROM crypto_ticks")[0][0] > 0
    # The asset names came from the local feed's reference lists at start, not from the stream.
    names = wait_until(lambda: dict(query(dsn, "SELECT symbol, name FROM crypto_assets WHERE name IS NOT NULL"))
                       .get("AAPL") and dict(query(dsn, "SELECT symbol, name FROM crypto_assets")), 60,
                       what="asset names")
    assert names["AAPL"] == "Apple Inc" and names["BTC/USD"] == "Bitcoin US Dollar"
    print(f"\nwheel demo: first rows {first_rows:.1f}s after `shardctl demo` started (fresh venv {wheel_venv})")

    stopped = run([shardctl, "stop"], cwd=work, env=env, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert demo.wait(60) == 0
    log = err.read_text()
    assert re.search(r"\[feed\] feed listening on ws://127\.0\.0\.1:\d+", log) and "[shardctl] feed" not in log
    assert "[assets] asset names: 11 of 11 symbol(s) named" in log

    # shardctl init → validate, from the wheel alone.
    cfg = work / "shardctl.toml"
    assert run([shardctl, "init", str(cfg)], cwd=work, env=env).returncode == 0
    valid = run([shardctl, "validate", str(cfg)], cwd=work, env={**env, "TWELVEDATA_API_KEY": "k" * 32})
    assert valid.returncode == 0 and ": OK:" in valid.stdout, valid.stderr

    # shardctl db init from the wheel: the schema ships as shardctl.sql.
    db_cfg = work / "db.toml"
    db_cfg.write_text(f"[database]\ndsn = {json.dumps(fresh_dsn)}\n[shards.s]\nsymbols = [\"AAPL\"]\n")
    init = run([shardctl, "db", "init", str(db_cfg)], cwd=work, env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    tables = {r[0] for r in query(fresh_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"crypto_ticks", "crypto_assets", "shardctl_ledger"} <= tables
