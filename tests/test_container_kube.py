"""deploy/kubernetes under a real container runtime: the StatefulSet's pod, rendered from the manifests by
``podkit.render_statefulset`` (podman 4.3 has no StatefulSet), played with ``podman kube play --network host``
against a real PostgreSQL on 127.0.0.1 and a local Twelve Data look-alike whose every tick is logged.

* the pod runs as uid 10001 on a read-only root with the journal on its claim; the readiness and liveness
  probes' own httpGet, sent as the kubelet sends it, is answered; a stop within terminationGracePeriodSeconds
  exits 0 with received = written, and every tick the feed sent is in the database;
* a pod killed with -9 (its PID 1, from the host) and played again replays its journal from the claim:
  tick by tick against the feed's log, nothing it had read is lost, every other loss lies in a recorded gap;
* two pods with [cluster] (as deploy/kubernetes/README.md says to turn it on): one streams, the other stands
  by; the streaming pod killed with -9, the standby takes every shard over.

Skipped, with the reason, where podman or the stand-in base image is missing (podkit.unavailable).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
from faultkit import Frozen, TimedFeed, assert_no_loss, freeze_then_kill, gap_rows, ledger_rows, stored_keys, tally
from podkit import (
    SHARDCTL_UID,
    KubePlay,
    RenderedPod,
    TcpPostgres,
    applied_manifests,
    exit_code,
    free_port,
    host_pid,
    logs,
    podman,
    probe_as_kubelet,
    received_written,
    render_statefulset,
    shardctl_image,
    tcp_postgres_fixture,
    toml_set,
    unavailable,
    unique,
    volume_path,
    wait_exited,
)
from support import query, settle, wait_until

#: A build from scratch (a changed pyproject.toml: psycopg2 compiled, every package fetched) takes about 2 min
#: on a busy machine, on top of the test itself.
pytestmark = [pytest.mark.skipif(bool(unavailable()), reason=unavailable() or ""), pytest.mark.timeout(600)]

#: Under host networking the pod's address is this machine's; the tests only ever talk to its loopback.
POD_IP = "127.0.0.1"
SECRET_KEYS = {"twelvedata-api-key": "key-pod", "dsn": ""}  # dsn: the test's database, filled in per test


@pytest.fixture(scope="module")
def tcp_postgres() -> Iterator[TcpPostgres]:
    yield from tcp_postgres_fixture()


def shipped_config() -> dict[str, Any]:
    (config_map,) = [d for d in applied_manifests() if d["kind"] == "ConfigMap"]
    return tomllib.loads(config_map["data"]["shardctl.toml"])


SHIPPED = shipped_config()
SHARD_SYMBOLS = {name: tuple(shard["symbols"]) for name, shard in SHIPPED["shards"].items()}
SHARD_OF = {s: name for name, syms in SHARD_SYMBOLS.items() for s in syms}.__getitem__
ALL_SYMBOLS = tuple(s for syms in SHARD_SYMBOLS.values() for s in syms)


class PodSite:
    """One test's feed, database, secret and played pods; everything it made goes in ``close()``."""

    def __init__(self, tmp_path: Path, tcp_postgres: TcpPostgres, feed: TimedFeed) -> None:
        self.feed = feed
        self.postgres = tcp_postgres
        self.dsn = tcp_postgres.database()
        self.prefix = unique("t") + "-"
        self.secret = f"{self.prefix}shardctl"
        self.kube = KubePlay(tmp_path)
        self.image = shardctl_image().id
        self.secret_values = {**SECRET_KEYS, "dsn": self.dsn}

    def render(self, ordinal: int, edit: Callable[[str], str] = lambda text: text,
               env: list[dict[str, Any]] | None = None) -> RenderedPod:
        port = free_port()

        def edit_config(text: str) -> str:
            text = toml_set(text, "source", "url", self.feed.url)
            text = toml_set(text, "source", "rest_url", self.feed.rest_url)
            text = toml_set(text, "supervisor", "metrics_port", port)
            return edit(text)

        rendered = render_statefulset(prefix=self.prefix, ordinal=ordinal, image=self.image, secret=self.secret,
                                      ports={"metrics": port}, edit_config=edit_config)
        if env:
            (pod,) = [d for d in rendered.docs if d["kind"] == "Pod"]
            pod["spec"]["containers"][0]["env"] += env
        return rendered

    def play(self, rendered: RenderedPod, *, claims: bool = True) -> None:
        if not self.kube.secrets:
            self.kube.secret(self.secret, self.secret_values)
        self.kube.play(rendered, claims=claims)

    def close(self) -> None:
        try:
            self.kube.close()
        finally:
            self.postgres.drop(self.dsn)


@pytest.fixture
def site(tmp_path: Path, tcp_postgres: TcpPostgres) -> Iterator[PodSite]:
    with TimedFeed(rate=400, symbols=ALL_SYMBOLS, seed=1818) as feed:
        made = PodSite(tmp_path, tcp_postgres, feed)
        try:
            yield made
        finally:
            made.close()


def status(rendered: RenderedPod) -> dict[str, dict[str, Any]] | None:
    """`shardctl status --json` inside the pod's container, per shard; None while it cannot answer."""
    done = podman("exec", rendered.container, "shardctl", "status", "--json", "-c", "/etc/shardctl/shardctl.toml",
                  check=False)
    if done.returncode != 0:
        return None
    return {s["name"]: s for s in json.loads(done.stdout)["shards"]}


def wait_status(rendered: RenderedPod, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout: float,
                what: str) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        shards = status(rendered)
        return shards if shards and predicate(shards) else None

    try:
        return wait_until(check, timeout, interval=0.3, what=f"{rendered.pod}: {what}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{logs(rendered.container)[-4000:]}") from None


def streaming(rows: int = 1) -> Callable[[dict[str, dict[str, Any]]], bool]:
    return lambda s: all(s[n]["state"] == "RUNNING" and s[n]["rows_written"] >= rows for n in SHARD_SYMBOLS)


def processes(rendered: RenderedPod) -> list[psutil.Process]:
    """The container's processes, seen from the host: its PID 1 (tini) and everything below it."""
    init = psutil.Process(host_pid(rendered.container))
    return [init, *init.children(recursive=True)]


def effective_capabilities(pid: int) -> str:
    """CapEff of a process, in hex, as /proc shows it."""
    found = re.search(r"^CapEff:\s*(\w+)$", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert found, f"no CapEff for pid {pid}"
    return found.group(1)


def workers(rendered: RenderedPod) -> list[psutil.Process]:
    return [p for p in processes(rendered) if "shardctl.worker" in " ".join(p.cmdline())]


def supervisor(rendered: RenderedPod) -> psutil.Process:
    """The supervisor: the one child of the container's PID 1 (tini)."""
    (found,) = psutil.Process(host_pid(rendered.container)).children()
    return found


def kill_pod_hard(rendered: RenderedPod, feed: TimedFeed) -> dict[int, Frozen]:
    """kill -9 of the whole pod from the host, measured: the supervisor is stopped (it must not restart
    anyone), each worker frozen and measured (faultkit.freeze_then_kill), then the container's PID 1 killed
    (its host pid: a crash, which podman may answer with a restart, as the kubelet does)."""
    sup = supervisor(rendered)
    sup.send_signal(signal.SIGSTOP)
    frozen: dict[int, Frozen] = {}
    for worker in workers(rendered):
        measured = freeze_then_kill(worker.pid, feed)
        if measured is not None:
            frozen[measured.conn] = measured
    killed = host_pid(rendered.container)
    os.kill(killed, signal.SIGKILL)
    # Gone, or already restarted by podman (restartPolicy Always, as the kubelet would): either way a new process.
    wait_until(lambda: podman("inspect", "--format", "{{.State.Status}} {{.State.Pid}}", rendered.container
                              ).stdout.split() != ["running", str(killed)], 30, what="the killed pod gone")
    return frozen


# ------------------------------------------------------------------ the pod, its probes, its claim, its stop

@pytest.mark.slow
def test_pod_runs_as_10001_on_a_read_only_root_answers_its_probes_and_stops_within_the_grace_period(
        site: PodSite) -> None:
    pod = site.render(0)
    site.play(pod)
    for kind, probe in pod.probes.items():  # as the kubelet asks: the pod IP, its Host header, kube-probe
        wait_until(lambda: probe_as_kubelet(probe, pod.ports, POD_IP)[0] == 200, 90, interval=0.5,
                   what=f"the {kind} answered 200\n{logs(pod.container)[-3000:]}")
    wait_status(pod, streaming(), 60, "both shards RUNNING with rows written")

    inspected = json.loads(podman("inspect", pod.container).stdout)[0]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert podman("exec", pod.container, "touch", "/opt/written", check=False).returncode != 0
    uids = {p.pid: p.uids().real for p in processes(pod)}
    assert set(uids.values()) == {SHARDCTL_UID}, f"processes of the pod and their uids: {uids}"
    caps = {p.pid: effective_capabilities(p.pid) for p in processes(pod)}
    assert set(caps.values()) == {"0000000000000000"}, f"effective capabilities (drop: ALL): {caps}"
    claim = volume_path(pod.claims[0])
    journals = {name: sorted((claim / "shards" / name / "journal").glob("*")) for name in SHARD_SYMBOLS}
    assert all(journals.values()), f"no journal segments on the claim {pod.claims[0]}: {journals}"
    assert {f.stat().st_uid for files in journals.values() for f in files} == {SHARDCTL_UID}

    started, stop_sent_at = time.monotonic(), time.time()  # ticks keep flowing while the pod stops
    podman("pod", "stop", "-t", str(pod.grace), pod.pod, timeout=pod.grace + 60)
    took = time.monotonic() - started
    log = logs(pod.container)
    assert exit_code(pod.container) == 0, log[-3000:]
    assert took < pod.grace, f"the stop took {took:.1f}s, past terminationGracePeriodSeconds {pod.grace}"
    received, written = received_written(log)
    stored = stored_keys(site.dsn)
    # Every tick sent before SIGTERM is stored; one sent while the workers close their sockets may meet a
    # closed one (the next start records that stretch as a gap).
    sent = site.feed.sent_ticks()
    before = [t for t in sent if t.sent_at < stop_sent_at]
    result = tally("pod-stop", before, stored, gap_rows(site.dsn), SHARD_OF)
    result.duplicated = 0  # ticks sent during the stop are stored too: not duplicates
    result.extra.update(sent_while_stopping=len(sent) - len(before))
    print(f"\n[kube] pod stopped in {took:.1f}s (grace {pod.grace}s): received {received}, written {written}; "
          f"{result.line()}")
    assert received == written == sum(stored.values()) > 0
    assert_no_loss(result, result.details())
    assert tally("pod-stop-all", sent, stored, {}, SHARD_OF).duplicated == 0
    site.kube.down(pod)  # kube down after the stop: removes the pod, keeps the claim


# ------------------------------------------------------------------ kill -9 and play again

@pytest.mark.slow
def test_pod_killed_9_and_played_again_replays_its_journal_from_the_claim(site: PodSite) -> None:
    pod = site.render(0)
    site.play(pod)
    wait_status(pod, streaming(rows=200), 90, "both shards RUNNING with 200 rows written")
    frozen = kill_pod_hard(pod, site.feed)
    stored_at_kill = sum(stored_keys(site.dsn).values())
    read_at_kill = sum(f.read_to for f in frozen.values())
    site.kube.down(pod)
    site.play(pod, claims=False)  # the claim outlives the pod, as a StatefulSet's does
    wait_status(pod, streaming(), 90, "both shards RUNNING again")
    site.feed.inject("silence", standing=True, seconds=600)  # no more ticks: what was sent can be accounted for

    def current() -> Any:
        return tally("pod-kill-9", site.feed.sent_ticks(), stored_keys(site.dsn), gap_rows(site.dsn), SHARD_OF,
                     frozen=frozen, open_conns=site.feed.connection_ids())

    settle(lambda: current().open_missing == 0, 60)
    settle(lambda: current().lost_outside == 0, 10)
    podman("pod", "stop", "-t", str(pod.grace), pod.pod, timeout=pod.grace + 60)
    log = logs(pod.container)
    assert exit_code(pod.container) == 0, log[-3000:]
    result = current()
    replayed = re.findall(r"replay[^\"]*", log)
    result.extra.update(measured_kills=len(frozen), stored_at_kill=stored_at_kill, read_bytes=read_at_kill)
    print(f"\n[kube] {result.line()}\n[kube] replay lines: {replayed[:4]}")
    assert len(frozen) == len(SHARD_SYMBOLS), f"both workers measured at the kill: {frozen}"
    assert_no_loss(result, result.details())
    assert ledger_rows(site.dsn) == result.stored, "no batch committed twice"
    assert result.stored > stored_at_kill


# ------------------------------------------------------------------ two pods, [cluster]

CLUSTER_BLOCK = re.compile(r"^# (\[cluster\]|lease_ttl = .*|renew_interval = .*)$", re.M)


def cluster_config(text: str) -> str:
    """[cluster] turned on the way deploy/kubernetes/README.md says: uncommented, and a key per shard."""
    enabled, found = CLUSTER_BLOCK.subn(r"\1", text)
    assert found == 3, f"the ConfigMap's commented [cluster] block changed:\n{text}"
    for name in SHARD_SYMBOLS:
        enabled = toml_set(enabled, f"shards.{name}", "api_key_env", f"TWELVEDATA_API_KEY_{name.upper()}")
    return enabled


def key_env() -> list[dict[str, Any]]:
    return [{"name": f"TWELVEDATA_API_KEY_{name.upper()}",
             "valueFrom": {"secretKeyRef": {"name": "", "key": f"twelvedata-api-key-{name}"}}}
            for name in SHARD_SYMBOLS]


@pytest.mark.slow
def test_two_pods_with_cluster_the_standby_takes_over_when_the_streaming_pod_is_killed(site: PodSite) -> None:
    site.secret_values.update({f"twelvedata-api-key-{name}": f"key-{name}" for name in SHARD_SYMBOLS})
    env = key_env()
    for entry in env:
        entry["valueFrom"]["secretKeyRef"]["name"] = site.secret
    first, second = site.render(0, cluster_config, env), site.render(1, cluster_config, env)
    site.play(first)
    wait_status(first, lambda s: all(s[n]["state"] == "RUNNING" and s[n]["lease_owner"] == first.pod
                                     for n in SHARD_SYMBOLS), 90, "streaming every shard")
    site.play(second)
    wait_status(second, lambda s: all(s[n]["state"] == "STANDBY" and s[n]["lease_owner"] == first.pod
                                      for n in SHARD_SYMBOLS), 90, "standing by for the first pod")
    standby_probe = probe_as_kubelet(second.probes["readinessProbe"], second.ports, POD_IP)
    assert standby_probe[0] == 200, f"a standby pod is ready: {standby_probe}"

    killed_at = time.monotonic()
    # SIGKILL to the whole pod; podman counts it as stopped by the user and does not restart it: a lost node.
    podman("pod", "kill", "-s", "KILL", first.pod)
    wait_exited(first.container, 30)
    try:
        wait_status(second, lambda s: all(s[n]["state"] == "RUNNING" and s[n]["lease_owner"] == second.pod
                                          for n in SHARD_SYMBOLS), 60, "taking every shard over")
    except AssertionError as e:
        hosts = query(site.dsn, "SELECT host_id, heartbeat, renewed_at, pid FROM shardctl_hosts")
        leases = query(site.dsn, "SELECT shard, owner, epoch, move_to FROM shardctl_leases")
        raise AssertionError(f"{e}\nhosts: {hosts}\nleases: {leases}\nstatus: {status(second)}") from None
    takeover = time.monotonic() - killed_at
    rows_before = sum(stored_keys(site.dsn).values())
    wait_until(lambda: sum(stored_keys(site.dsn).values()) > rows_before, 30, what="the new owner writing rows")
    print(f"\n[kube] cluster: {second.pod} took over {len(SHARD_SYMBOLS)} shard(s) {takeover:.1f}s after "
          f"{first.pod} was killed with -9")
    podman("pod", "stop", "-t", str(second.grace), second.pod, timeout=second.grace + 60)
    assert exit_code(second.container) == 0, logs(second.container)[-3000:]
