"""deploy/kubernetes: every manifest is valid against the Kubernetes schemas (offline, kubernetes-validate,
strict: unknown fields fail), and the pieces agree with the shardctl config the ConfigMap carries: probes on
/healthz of the metrics port, a grace period above every stop_timeout, secrets only through secretKeyRef,
the journal on a PersistentVolumeClaim at the state dir, and a config that `shardctl validate` accepts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[test]')")
import yaml  # noqa: E402  (PyYAML; kubernetes-validate depends on it too)

from shardctl.config import Config, load_config  # noqa: E402

#: The Kubernetes release whose schemas the manifests are checked against (shipped by kubernetes-validate 1.37.0).
KUBERNETES_VERSION = "1.37"
KUBE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
EXAMPLE_SECRET = "secret.example.yaml"
CONFIG_KEY = "shardctl.toml"
#: Environment variable names that must never carry a literal value in a manifest.
SECRET_NAME = re.compile(r"KEY|DSN|TOKEN|PASSWORD|SECRET", re.IGNORECASE)
PLACEHOLDER = "REPLACE_ME"
KEY_VARS = ("TWELVEDATA_API_KEY", "SHARDCTL_DSN", "SHARDCTL_STATE_DIR")


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted(KUBE.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in _load(path)]


MANIFESTS = _manifests()


def _applied() -> list[dict[str, Any]]:
    """The documents `kubectl apply -k deploy/kubernetes` creates (the resources kustomization.yaml lists)."""
    kustomization = _load(KUBE / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in _load(KUBE / name)]


def _kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _applied() if doc["kind"] == kind]


def _containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def _config_text(statefulset: dict[str, Any]) -> str:
    """The TOML in the ConfigMap that this StatefulSet mounts."""
    names = {v["configMap"]["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    texts = [cm["data"][CONFIG_KEY] for cm in _kind("ConfigMap") if cm["metadata"]["name"] in names]
    assert len(texts) == 1, f"{statefulset['metadata']['name']} should mount one ConfigMap with {CONFIG_KEY}"
    return texts[0]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The ConfigMap's shardctl config as shardctl reads it (state_dir from the file, not the environment)."""
    monkeypatch.delenv("SHARDCTL_STATE_DIR", raising=False)
    (statefulset,) = _kind("StatefulSet")
    path = tmp_path / CONFIG_KEY
    path.write_text(_config_text(statefulset), encoding="utf-8")
    return load_config(path)


def _quantity(text: str) -> int:
    """A Kubernetes storage quantity in bytes (binary and decimal suffixes)."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert match, f"unsupported quantity {text!r}"
    factor = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
              "T": 10**12}[match.group(2)]
    return int(match.group(1)) * factor


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("doc", [doc for _, doc in MANIFESTS], ids=[name for name, _ in MANIFESTS])
def test_manifest_matches_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    try:
        checked = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
    assert checked == KUBERNETES_VERSION


def test_strict_validation_rejects_an_unknown_field() -> None:
    (statefulset,) = _kind("StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = _load(KUBE / "kustomization.yaml")[0]
    shipped = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml", EXAMPLE_SECRET}
    assert sorted(kustomization["resources"]) == sorted(shipped)
    images = {image["name"] for image in kustomization.get("images", [])}
    for statefulset in _kind("StatefulSet"):
        for container in _containers(statefulset["spec"]["template"]["spec"]):
            assert container["image"] in images, f"{container['name']}: image not set by kustomization images"


# ------------------------------------------------------------------ the pod against the config


def test_the_statefulset_runs_one_supervisor_pod() -> None:
    (statefulset,) = _kind("StatefulSet")
    assert statefulset["spec"]["replicas"] == 1, "a second pod would run the same shards"
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = container.get("command", []) + container["args"]
    assert "start" in args and "--shard" not in args, "the pod runs the supervisor (it serves /healthz)"
    assert {s["metadata"]["name"] for s in _kind("Service")} >= {statefulset["spec"]["serviceName"]}


def test_every_container_has_probes_on_healthz_of_the_metrics_port(config: Config) -> None:
    assert config.supervisor.metrics_port, "the config must set supervisor.metrics_port"
    assert config.supervisor.metrics_host not in ("127.0.0.1", "localhost", "::1"), \
        "httpGet probes come from the kubelet over the pod IP: metrics_host must not be loopback"
    for statefulset in _kind("StatefulSet"):
        for container in statefulset["spec"]["template"]["spec"]["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                get = container.get(probe, {}).get("httpGet")
                assert get is not None, f"{container['name']}: no {probe} with httpGet"
                assert get["path"] == "/healthz"
                port = ports.get(get["port"], get["port"])
                assert port == config.supervisor.metrics_port, f"{probe} checks port {port}"


def test_grace_period_is_above_every_stop_timeout(config: Config) -> None:
    longest = max([config.supervisor.stop_timeout] + [s.settings.stop_timeout for s in config.shards.values()])
    for statefulset in _kind("StatefulSet"):
        grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > longest, f"terminationGracePeriodSeconds {grace} must exceed stop_timeout {longest:g}s"


def test_secrets_come_from_secret_key_refs(config: Config) -> None:
    needed = {s.api_key_env for s in config.shards.values()} | {config.database.dsn_env}
    example = _load(KUBE / EXAMPLE_SECRET)[0]
    for statefulset in _kind("StatefulSet"):
        for container in _containers(statefulset["spec"]["template"]["spec"]):
            assert not container.get("envFrom"), "name each secret variable with a secretKeyRef"
            env = {e["name"]: e for e in container.get("env", [])}
            for name in needed:
                assert name in env, f"{container['name']}: {name} (named by the config) is not set"
            for name, var in env.items():
                if name in needed or SECRET_NAME.search(name):
                    assert "value" not in var, f"{name} has a literal value; use a secretKeyRef"
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == example["metadata"]["name"]
                    assert ref["key"] in example["stringData"], f"{name}: key {ref['key']} not in the example"


def test_the_example_secret_holds_placeholders_only() -> None:
    (example,) = _load(KUBE / EXAMPLE_SECRET)
    assert "data" not in example
    for key, value in example["stringData"].items():
        assert PLACEHOLDER in value, f"{EXAMPLE_SECRET}: {key} must be a placeholder containing {PLACEHOLDER}"


def test_the_journal_is_a_claim_mounted_at_the_state_dir(config: Config) -> None:
    for statefulset in _kind("StatefulSet"):
        pod = statefulset["spec"]["template"]["spec"]
        claims = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("SHARDCTL_STATE_DIR") == str(config.state_dir)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        mount = mounts.get(str(config.state_dir))
        assert mount is not None, f"nothing mounted at the state dir {config.state_dir}"
        assert mount["name"] in claims and mount["name"] not in {v["name"] for v in pod.get("volumes", [])}
        assert not mount.get("readOnly")
        claim = claims[mount["name"]]["spec"]
        assert claim["accessModes"] == ["ReadWriteOnce"]
        journals = sum(s.settings.journal_max_bytes for s in config.shards.values())
        assert _quantity(claim["resources"]["requests"]["storage"]) > journals, "room for every journal at its cap"


def test_the_pod_runs_unprivileged_on_a_read_only_root() -> None:
    for statefulset in _kind("StatefulSet"):
        pod = statefulset["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["fsGroup"], "fsGroup makes the claim writable"
        for container in _containers(pod):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


# ------------------------------------------------------------------ the config itself


def _validate(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardctl", "validate", str(path)], env=env, text=True,
                          capture_output=True, timeout=60)


def test_the_configmap_config_passes_shardctl_validate(tmp_path: Path) -> None:
    (statefulset,) = _kind("StatefulSet")
    path = tmp_path / CONFIG_KEY
    path.write_text(_config_text(statefulset), encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    dummies = {"TWELVEDATA_API_KEY": "dummy-key", "SHARDCTL_DSN": "postgresql://dummy@db.invalid/market",
               "SHARDCTL_STATE_DIR": str(tmp_path / "state")}

    done = _validate(path, {**base, **dummies})
    assert done.returncode == 0, done.stderr
    assert ": OK: " in done.stdout
    assert "warning" not in done.stderr, done.stderr

    # Unset key variables are warnings for `validate` (exit 0) and errors only for `start`.
    bare = _validate(path, {**base, "SHARDCTL_STATE_DIR": dummies["SHARDCTL_STATE_DIR"]})
    assert bare.returncode == 0, bare.stderr
    assert "TWELVEDATA_API_KEY is not set" in bare.stderr and "SHARDCTL_DSN is not set" in bare.stderr
