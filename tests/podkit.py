"""Containers for the container tests (tests/test_container*.py): podman as this machine runs it.

* ``unavailable``: why the container tests cannot run here (no podman, not root, no stand-in for
  ``python:3.11-slim``), or None. ``../shared/tools/container-base`` installs podman and builds the
  stand-in; image registries are out of reach, so every build runs with ``--pull=never``.
* ``shardctl_image``: deploy/docker/Dockerfile built from this repository, once per test process and
  one build at a time on the machine (a file lock: the suite runs in 3 processes, other checkouts may
  build too). The layers cache between runs, so a rebuild after a source change takes seconds.
  Tests use the image by its id, never by a tag another checkout could move.
* ``Container``: ``podman run -d`` with host networking (traffic stays on this machine's loopback),
  removed after the test.
* ``KubePlay``: a StatefulSet of deploy/kubernetes rendered as ``podman kube play`` takes it (podman
  4.3 has no StatefulSet), played with ``--network host``; ``render_statefulset`` says what changes.
* ``TcpPostgres``: a PostgreSQL on 127.0.0.1 for the containers (the session's embedded server listens
  on a unix socket its own user owns): the session's ``SHARDCTL_TEST_DSN`` server when it is on
  TCP, else an embedded server of this module's own on a free port.
"""

from __future__ import annotations

import base64
import copy
import fcntl
import functools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg2.extensions
import yaml
from support import wait_until

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
KUBE = REPO / "deploy" / "kubernetes"
BASE_TOOL = REPO.parent / "shared" / "tools" / "container-base"
BASE_IMAGE = "docker.io/library/python:3.11-slim"
#: The rlimits this machine's containers need (container-base: the defaults cannot be raised here).
RUN_LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
BUILD_LOCK = Path(tempfile.gettempdir()) / "shardctl-podkit-build.lock"
#: The user the image and the manifests run shardctl as.
SHARDCTL_UID = 10001


@functools.cache
def unavailable() -> str | None:
    """Why the container tests cannot run on this machine, or None when they can."""
    if shutil.which("podman") is None:
        return f"podman is not installed (bash {BASE_TOOL} install)"
    if os.geteuid() != 0:
        return "the container tests run podman as root (host networking, kube play volumes, kill -9 by host pid)"
    if not BASE_TOOL.exists():
        return f"{BASE_TOOL} is not on this machine: no stand-in for {BASE_IMAGE} (image registries are out of reach)"
    done = subprocess.run(["bash", str(BASE_TOOL), "installed"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"the stand-in for {BASE_IMAGE} is not built (bash {BASE_TOOL} build)"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True, input: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    """``podman --runtime runc ARGS`` (crun refuses this kernel's cgroup layout); raises with its output on failure."""
    done = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True,
                          timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                             f"\n{done.stderr[-3000:]}")
    return done


@dataclass(frozen=True)
class Image:
    id: str
    size: int            #: bytes, as `podman image inspect` reports it
    build_seconds: float  #: this process's build (all cache hits when nothing changed)


@functools.cache
def shardctl_image() -> Image:
    """deploy/docker/Dockerfile built unchanged from the repository (``--format docker``: keeps the HEALTHCHECK)."""
    with open(BUILD_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory() as tmp:
            iidfile = Path(tmp) / "iid"
            started = time.monotonic()
            podman("build", "--format", "docker", "--pull=never", "--network", "host", "-f", str(DOCKERFILE),
                   "--iidfile", str(iidfile), "-t", "localhost/shardctl:test", str(REPO), timeout=900)
            seconds = time.monotonic() - started
            image_id = iidfile.read_text().strip()
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image_id).stdout.strip())
    return Image(image_id, size, seconds)


def unique(prefix: str) -> str:
    """A name no other test (process, or checkout) uses at the same time."""
    return f"{prefix}-{secrets.token_hex(4)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def host_pid(container: str) -> int:
    """The host pid of a container's first process (its PID 1: tini in shardctl's image)."""
    return int(podman("inspect", "--format", "{{.State.Pid}}", container).stdout.strip())


def exit_code(container: str) -> int:
    return int(podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip())


def logs(container: str) -> str:
    done = podman("logs", container, check=False)
    return done.stdout + done.stderr


def wait_exited(container: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip() not in ("exited", "stopped"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{container} still running after {timeout:g}s")
        time.sleep(0.1)


STOPPED_CLEANLY = re.compile(r"supervisor stopped cleanly: (\d+) tick\(s\) received, (\d+) row\(s\) written")


def received_written(log: str) -> tuple[int, int]:
    """The supervisor's last "stopped cleanly" line: (ticks received, rows written); fails when there is none."""
    found = STOPPED_CLEANLY.findall(log)
    assert found, f"no 'supervisor stopped cleanly' line in the container's log:\n{log[-3000:]}"
    received, written = found[-1]
    return int(received), int(written)


class Container:
    """``podman run -d --network host`` of an image; ``remove()`` (force) in teardown, with its volumes."""

    def __init__(self, image: str, args: list[str], *, name: str, volumes: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, options: tuple[str, ...] = ()) -> None:
        self.name = name
        self.volumes = dict(volumes or {})
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        flags += [f"--volume={source}:{target}" for source, target in self.volumes.items()]
        podman("run", "-d", "--name", name, "--network", "host", *RUN_LIMITS, *flags, *options, image, *args)

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=check)

    def stop(self, grace: int) -> float:
        """``podman stop -t GRACE`` (SIGTERM, SIGKILL after GRACE seconds); returns the seconds it took."""
        started = time.monotonic()
        podman("stop", "-t", str(grace), self.name, timeout=grace + 60)
        return time.monotonic() - started

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)
        for source in self.volumes:
            if not source.startswith("/"):
                podman("volume", "rm", "-f", source, check=False)


# ---------------------------------------------------------------- Kubernetes manifests under kube play

def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def applied_manifests() -> list[dict[str, Any]]:
    """The documents `kubectl apply -k deploy/kubernetes` creates (the resources kustomization.yaml lists)."""
    kustomization = _load(KUBE / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in _load(KUBE / name)]


def toml_set(text: str, table: str, key: str, value: Any) -> str:
    """``text`` (a TOML document) with ``key`` of ``[table]`` set to ``value`` (replaced, or added to the table)."""
    line = f"{key} = {json.dumps(value)}"
    header = re.compile(rf"^\[{re.escape(table)}\]\s*$", re.M)
    match = header.search(text)
    if match is None:
        return text.rstrip("\n") + f"\n[{table}]\n{line}\n"
    end = re.compile(r"^\[", re.M).search(text, match.end())
    stop = end.start() if end else len(text)
    body = text[match.end():stop]
    existing = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    body = existing.sub(line, body, count=1) if existing.search(body) else f"\n{line}" + body
    return text[:match.end()] + body + text[stop:]


@dataclass(frozen=True)
class RenderedPod:
    """One pod of the StatefulSet, as the controller would name it, and the manifests to play for it."""

    pod: str          #: the pod's name, ``<statefulset>-<ordinal>`` (with the test's prefix)
    container: str    #: podman's name of its container: ``<pod>-<container>``
    claims: list[str]  #: its PersistentVolumeClaims, ``<template>-<pod>``
    config_maps: list[str]
    docs: list[dict[str, Any]]
    probes: dict[str, dict[str, Any]]  #: readinessProbe/livenessProbe of the template (port names kept)
    ports: dict[str, int]              #: the container's named ports
    grace: int                         #: terminationGracePeriodSeconds

    def manifest(self, *, claims: bool = True) -> str:
        """The documents to play; ``claims=False`` when the claims exist already (a pod played again: the
        StatefulSet's claims outlive its pods, and podman 4.3 refuses to create a volume that exists)."""
        return yaml.safe_dump_all([d for d in self.docs if claims or d["kind"] != "PersistentVolumeClaim"],
                                  sort_keys=False)


def render_statefulset(*, prefix: str, ordinal: int, image: str, secret: str, ports: dict[str, int],
                       edit_config: Callable[[str], str]) -> RenderedPod:
    """The StatefulSet of deploy/kubernetes as one Pod, its claims and the ConfigMap, for ``podman kube play``.

    What changes, and why (nothing else does):

    * kind StatefulSet -> Pod ``{prefix}{name}-{ordinal}`` with the template's metadata and spec, and its
      ``volumeClaimTemplates`` -> PersistentVolumeClaims ``{claim}-{pod}`` mounted where the template says
      (what the StatefulSet controller does; podman 4.3 has no StatefulSet);
    * the image -> the id of the image built from deploy/docker/Dockerfile (kustomization.yaml's job);
    * host networking (the only way podman keeps traffic on this machine's loopback): containers declare
      no ``ports``, the probes name their port by number, and ``ports`` gives the named ports free numbers
      (pods of parallel tests share the loopback; ``edit_config`` must listen there too);
    * the Secret and the ConfigMap are named per test (``{prefix}...``), so parallel tests do not meet;
      the Secret itself is a podman secret (``create_secret``), the way podman reads them;
    * the ConfigMap's config goes through ``edit_config`` (the test's feed, database port, metrics port).
    """
    docs = applied_manifests()
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    template = copy.deepcopy(sts["spec"]["template"])
    spec = template["spec"]
    pod = f"{prefix}{sts['metadata']['name']}-{ordinal}"
    out: list[dict[str, Any]] = []
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            source = copy.deepcopy(config_maps[volume["configMap"]["name"]])
            source["metadata"]["name"] = volume["configMap"]["name"] = f"{prefix}{source['metadata']['name']}-{ordinal}"
            source["data"] = {k: edit_config(v) for k, v in source["data"].items()}
            out.append(source)
    claims = []
    for claim_template in sts["spec"].get("volumeClaimTemplates", []):
        claim = copy.deepcopy(claim_template)
        template_name = claim["metadata"]["name"]
        claim["metadata"]["name"] = f"{template_name}-{pod}"
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim})
        spec.setdefault("volumes", []).append({"name": template_name,
                                               "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}})
        claims.append(claim["metadata"]["name"])
    (container,) = spec["containers"]
    named = {p["name"]: p["containerPort"] for p in container.pop("ports", []) if "name" in p}
    assert set(ports) == set(named), f"the container's named ports are {sorted(named)}"
    probes = {kind: copy.deepcopy(container[kind]) for kind in ("readinessProbe", "livenessProbe") if kind in container}
    for kind in probes:
        get = container[kind].get("httpGet", {})
        if isinstance(get.get("port"), str):
            get["port"] = ports[get["port"]]
    container["image"] = image
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            ref["name"] = secret
    out.append({"apiVersion": "v1", "kind": "Pod",
                "metadata": {**template.get("metadata", {}), "name": pod}, "spec": spec})
    config_names = [d["metadata"]["name"] for d in out if d["kind"] == "ConfigMap"]
    return RenderedPod(pod, f"{pod}-{container['name']}", claims, config_names, out, probes, dict(ports),
                       int(spec.get("terminationGracePeriodSeconds", 30)))


def create_secret(name: str, values: dict[str, str]) -> None:
    """A podman secret as ``kube play`` reads a Kubernetes Secret: JSON of base64 values."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    podman("secret", "create", name, "-", input=json.dumps(data))


class KubePlay:
    """``podman kube play --network host`` of rendered pods; ``close()`` takes them down, claims and secrets too."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.played: list[Path] = []
        self.secrets: list[str] = []
        self.volumes: list[str] = []  #: claims, and the volumes podman makes for ConfigMaps

    def secret(self, name: str, values: dict[str, str]) -> None:
        create_secret(name, values)
        self.secrets.append(name)

    def play(self, rendered: RenderedPod, *, claims: bool = True) -> None:
        path = self.directory / f"{rendered.pod}.yaml"
        path.write_text(rendered.manifest(claims=claims))
        if path not in self.played:
            self.played.append(path)
        self.volumes += [v for v in rendered.claims + rendered.config_maps if v not in self.volumes]
        podman("kube", "play", "--network", "host", str(path), timeout=180)

    def down(self, rendered: RenderedPod) -> None:
        """``podman kube down``: the pod stops and goes, its claims stay."""
        done = podman("kube", "down", str(self.directory / f"{rendered.pod}.yaml"), timeout=120, check=False)
        if done.returncode == 0:
            return
        if "device or resource busy" not in done.stderr:
            raise AssertionError(f"podman kube down exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-3000:]}")

        def removed() -> bool:  # podman's teardown race: a container's shm mount still busy; remove again
            podman("pod", "rm", "-f", "-t", "0", rendered.pod, check=False)
            return podman("pod", "exists", rendered.pod, check=False).returncode == 1

        wait_until(removed, 60, interval=1.0, what=f"pod {rendered.pod} removed after: {done.stderr[-300:]}")

    def close(self) -> None:
        for path in self.played:
            podman("kube", "down", str(path), timeout=120, check=False)
            pod = path.stem
            podman("pod", "rm", "-f", "-t", "0", pod, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)
        for name in self.secrets:
            podman("secret", "rm", name, check=False)


def volume_path(name: str) -> Path:
    return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip())


def probe_as_kubelet(probe: dict[str, Any], ports: dict[str, int], pod_ip: str) -> tuple[int, bytes]:
    """The probe's ``httpGet`` sent the way the kubelet sends it: to the pod IP (``host`` unset), the named
    port resolved from the container's ports, Host ``IP:PORT``, ``User-Agent: kube-probe/...``, its headers."""
    get = probe["httpGet"]
    port = ports[get["port"]] if isinstance(get["port"], str) else int(get["port"])
    host = get.get("host", pod_ip)
    headers = {"Host": f"{host}:{port}", "User-Agent": "kube-probe/1.37", "Accept": "*/*",
               **{h["name"]: h["value"] for h in get.get("httpHeaders", [])}}
    return http_get(f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}", headers,
                    timeout=float(probe.get("timeoutSeconds", 1)))


# ---------------------------------------------------------------- a PostgreSQL on 127.0.0.1

class TcpPostgres:
    """A PostgreSQL the containers reach on 127.0.0.1 (see module doc); ``database()`` makes a fresh one."""

    def __init__(self, external_dsn: str | None) -> None:
        self._own: Any = None
        params = psycopg2.extensions.parse_dsn(external_dsn) if external_dsn else {}
        if params.get("host", "") in ("127.0.0.1", "localhost"):
            self.admin_dsn = external_dsn or ""
            self.where = "the session's SHARDCTL_TEST_DSN server"
        else:
            from netkit import LinkPostgres

            self._own = LinkPostgres(Path(tempfile.mkdtemp(prefix="shardctl-pod-pg-")), ["127.0.0.1"], ["127.0.0.1"])
            self._own.start()
            self.admin_dsn = self._own.dsn(address="127.0.0.1")
            self.where = f"an embedded PostgreSQL on 127.0.0.1:{self._own.port}"

    def database(self) -> str:
        name = unique("pod").replace("-", "_")
        conn = psycopg2.connect(self.admin_dsn, connect_timeout=10)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return psycopg2.extensions.make_dsn(self.admin_dsn, dbname=name)

    def drop(self, dsn: str) -> None:
        conn = psycopg2.connect(self.admin_dsn, connect_timeout=10)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{psycopg2.extensions.parse_dsn(dsn)["dbname"]}" WITH (FORCE)')
        conn.close()

    def close(self) -> None:
        if self._own is not None:
            self._own.close()


def tcp_postgres_fixture() -> Iterator[TcpPostgres]:
    server = TcpPostgres(os.environ.get("SHARDCTL_TEST_DSN"))
    try:
        yield server
    finally:
        server.close()
