"""deploy/docker/compose.yaml under podman-compose: its shardctl service, built from the file, runs for real
against a PostgreSQL on the host. What the test changes in its copy of the file, and why (nothing else):

* the timescaledb and grafana services and ``depends_on`` go: their images come from registries this
  machine cannot reach (compose.yaml says so);
* ``network_mode: host``, so the container reaches the host's database and the test's feed on loopback;
  ``SHARDCTL_DSN`` names that database instead of the timescaledb service;
* the config mounted is config/prod.toml with its feed (``[source]``) pointed at a local Twelve Data
  look-alike and a free metrics port (``SHARDCTL_HEALTHZ_URL`` tells the image's HEALTHCHECK);
* paths are made absolute (the copy lives in the test's directory), the project name is the test's own.

podman-compose 1.0.3 (Debian 12) gives a ``network_mode: host`` service its project network as well, which
podman refuses ("cannot set multiple networks without bridge network mode"); the test runs it with a
``--podman-path`` shim that drops those two flags when ``--network host`` is there (``HOST_NETWORK_SHIM``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from faultkit import TimedFeed
from podkit import (
    REPO,
    SHARDCTL_UID,
    TcpPostgres,
    exit_code,
    free_port,
    http_get,
    logs,
    podman,
    received_written,
    shardctl_image,
    tcp_postgres_fixture,
    toml_set,
    unavailable,
    unique,
)
from support import query, wait_until

COMPOSE = REPO / "deploy" / "docker" / "compose.yaml"
HOST_NETWORK_SHIM = """#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
if "--network" in args and args[args.index("--network") + 1] == "host":
    for flag in ("--net", "--network-alias"):
        while flag in args:
            del args[args.index(flag):args.index(flag) + 2]
os.execvp("podman", ["podman", *args])
"""


def _why_not() -> str | None:
    if reason := unavailable():
        return reason
    if shutil.which("podman-compose") is None:
        return "podman-compose is not installed (bash ../shared/tools/container-base install)"
    return None


#: A build from scratch (a changed pyproject.toml: psycopg2 compiled, every package fetched) takes about 2 min
#: on a busy machine, on top of the test itself.
pytestmark = [pytest.mark.skipif(bool(_why_not()), reason=_why_not() or ""), pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tcp_postgres() -> Iterator[TcpPostgres]:
    yield from tcp_postgres_fixture()


def compose_copy(directory: Path, feed: TimedFeed, metrics_port: int) -> Path:
    """The test's copy of compose.yaml (see module doc); returns its path."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["shardctl"]
    compose["services"] = {"shardctl": service}
    compose["volumes"] = {name: spec for name, spec in compose["volumes"].items()
                          if any(v.startswith(f"{name}:") for v in service["volumes"])}
    service.pop("depends_on")
    service["network_mode"] = "host"
    service["build"]["context"] = str((COMPOSE.parent / service["build"]["context"]).resolve())
    config_source, config_target = service["volumes"][0].split(":", 1)
    text = (COMPOSE.parent / config_source).read_text()
    text = toml_set(text, "source", "url", feed.url)
    text = toml_set(text, "source", "rest_url", feed.rest_url)
    text = toml_set(text, "supervisor", "metrics_port", metrics_port)
    config = directory / "shardctl.toml"
    config.write_text(text)
    config.chmod(0o644)
    service["volumes"][0] = f"{config}:{config_target}"
    service["environment"]["SHARDCTL_HEALTHZ_URL"] = f"http://127.0.0.1:{metrics_port}/healthz"
    path = directory / "compose.yaml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_compose_shardctl_service_builds_streams_against_the_host_database_and_stops_cleanly(
        tmp_path: Path, tcp_postgres: TcpPostgres) -> None:
    shardctl_image()  # the layers, built once per session: the compose build below then takes seconds
    dsn = tcp_postgres.database()
    project = unique("shardctl-compose")
    metrics_port = free_port()
    env = {**os.environ, "TWELVEDATA_API_KEY": "key-compose", "POSTGRES_PASSWORD": "unused-here",
           "BUILDAH_FORMAT": "docker"}  # docker format keeps the image's HEALTHCHECK

    shim = tmp_path / "podman-host-network"
    shim.write_text(HOST_NETWORK_SHIM)
    shim.chmod(0o755)

    def compose(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman-compose", "--podman-path", str(shim), "-p", project, "-f", str(path), *args],
                              capture_output=True, text=True, timeout=timeout, env=env)
        if not check:
            return done
        assert done.returncode == 0, f"podman-compose {' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done

    with TimedFeed(rate=200, seed=2020) as feed:
        path = compose_copy(tmp_path, feed, metrics_port)
        service = yaml.safe_load(path.read_text())["services"]["shardctl"]
        service["environment"]["SHARDCTL_DSN"] = dsn
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()),
                                        "services": {"shardctl": service}}, sort_keys=False))
        container = f"{project}_shardctl_1"
        try:
            compose("build", "shardctl", timeout=900)
            compose("up", "-d", "--no-deps", "shardctl")
            healthz = f"http://127.0.0.1:{metrics_port}/healthz"
            try:
                wait_until(lambda: http_get(healthz)[0] == 200, 90, interval=0.5, what="/healthz 200")
                wait_until(lambda: _rows(dsn) >= 100, 60, interval=0.5, what="rows in the host's database")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{logs(container)[-3000:]}") from None
            inspected = json.loads(podman("inspect", container).stdout)[0]
            assert inspected["HostConfig"]["ReadonlyRootfs"] is True
            assert podman("exec", container, "id", "-u").stdout.strip() == str(SHARDCTL_UID)
            health = podman("healthcheck", "run", container, check=False)
            assert health.returncode == 0, f"HEALTHCHECK: {health.stdout}{health.stderr}"
            grace = int(str(yaml.safe_load(COMPOSE.read_text())["services"]["shardctl"]["stop_grace_period"])
                        .rstrip("s"))
            started = time.monotonic()
            compose("stop", "shardctl", timeout=grace + 60)
            took = time.monotonic() - started
            log = logs(container)
            assert exit_code(container) == 0, log[-3000:]
            received, written = received_written(log)
            print(f"\n[compose] stopped in {took:.1f}s (stop_grace_period {grace}s): {received} tick(s) received, "
                  f"{written} row(s) written, {_rows(dsn)} row(s) in the host's database")
            assert took < grace
            assert received == written == _rows(dsn) > 0
        finally:
            compose("down", "-v", timeout=120, check=False)
            podman("rm", "-f", "-t", "0", container, check=False)
            podman("network", "rm", "-f", f"{project}_default", check=False)
            tcp_postgres.drop(dsn)


def _rows(dsn: str) -> int:
    exists = query(dsn, "SELECT to_regclass('crypto_ticks') IS NOT NULL")[0][0]
    return int(query(dsn, "SELECT count(*) FROM crypto_ticks")[0][0]) if exists else 0
