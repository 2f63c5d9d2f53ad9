"""``[cluster]``: this host's id and the lease timing, validated like every other section.

The same config file runs on every host, so the host id comes, first match
wins, from ``$SHARDCTL_HOST_ID``, ``[cluster] host_id``, or the machine's
host name. Timing: ``lease_ttl`` ≥ 4 × ``renew_interval`` (a standby must
not mistake a few slow renewals for a death) and ≥ 2 s.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Mapping, Protocol

from shardctl.config.model import MAX_CONNECTIONS_PER_KEY, ClusterConfig, Config

#: Overrides ``[cluster] host_id`` (one config file, many hosts; a pod's name in Kubernetes).
HOST_ID_ENV = "SHARDCTL_HOST_ID"
CLUSTER_KEYS = ("host_id", "lease_ttl", "renew_interval")
_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class _Reader(Protocol):
    def problem(self, key: str, message: str) -> None: ...
    def string(self, raw: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None: ...
    def duration(self, raw: Mapping[str, Any], key: str, where: str, default: float) -> float: ...


def read_cluster(reader: _Reader, raw: Mapping[str, Any]) -> ClusterConfig:
    """The ``[cluster]`` table as a ClusterConfig; each problem goes to ``reader`` with its key and fix."""
    default = ClusterConfig(host_id="")
    env = os.environ.get(HOST_ID_ENV, "").strip()
    host_id = env or reader.string(raw, "host_id", "cluster.host_id", None) or socket.gethostname()
    if not _HOST_ID.match(host_id):
        where = f"${HOST_ID_ENV}" if env else "cluster.host_id"
        reader.problem("cluster.host_id", f"{where} is {host_id!r}; a host id is 1-63 letters, digits, '.', '_' "
                                          "or '-', starting with a letter or digit: set one per host")
    ttl = reader.duration(raw, "lease_ttl", "cluster.lease_ttl", default.lease_ttl)
    renew = reader.duration(raw, "renew_interval", "cluster.renew_interval", default.renew_interval)
    if ttl < 2.0:
        reader.problem("cluster.lease_ttl", f"must be at least 2s, got {ttl:g}s")
    elif ttl < 4 * renew:
        reader.problem("cluster.lease_ttl", f"{ttl:g}s is less than 4 × renew_interval ({renew:g}s): a few slow "
                                            "renewals would look like a death; raise lease_ttl or lower renew_interval")
    return ClusterConfig(host_id=host_id, lease_ttl=ttl, renew_interval=renew)


def check_cluster_keys(reader: _Reader, config: Config) -> None:
    """In cluster mode, refuse an API key shared by shards: a takeover may need two sockets per shard.

    A host cut off from the database cannot tell the cut from a database
    outage, and an outage must not stop the stream, so it keeps its socket
    until it reaches the database again (and learns it lost the lease) while
    the new owner opens its own. Two shards on one key could then need four
    sockets; Twelve Data allows three and closes the oldest.
    """
    if config.cluster is None:
        return
    by_key: dict[str, list[str]] = {}
    for shard in config.shards.values():
        by_key.setdefault(shard.api_key_env, []).append(shard.name)
    for env, names in by_key.items():
        if len(names) > 1:
            reader.problem(f"shards.{names[1]}.api_key_env",
                           f"shards {', '.join(names)} share the API key in ${env}; with [cluster] each shard needs "
                           f"its own key (a takeover may hold 2 sockets per shard for a while, and Twelve Data "
                           f"allows {MAX_CONNECTIONS_PER_KEY} per key): give every shard its own api_key_env")
