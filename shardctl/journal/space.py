"""Whether the journals' caps fit on the disks they live on."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Collection

from shardctl.config.model import Config
from shardctl.errors import ConfigError


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged process may still write on ``path``'s filesystem (None if unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _used(directory: Path) -> int:
    """Bytes the journal already holds there: space it may reuse."""
    try:
        return sum(p.stat().st_size for p in directory.glob("*.seg"))
    except OSError:
        return 0


def journal_space_warnings(config: Config, shards: Collection[str] | None = None) -> list[ConfigError]:
    """One warning per filesystem where the shards' ``journal_max_bytes`` add up to more than it has free.

    ``shards``: only these (default: all of the config's).

    Such a journal meets a full disk before its cap: the shard then stops
    reading (disk full) instead of applying ``journal_on_full``.
    """
    caps: dict[int, list[tuple[str, int, Path]]] = defaultdict(list)
    for name, shard in config.shards.items():
        if shards is not None and name not in shards:
            continue
        cap = shard.settings.journal_max_bytes
        where = config.shard_dir(name) / "journal"
        try:
            device = os.stat(_existing(where)).st_dev
        except OSError:
            continue
        caps[device].append((name, cap, where))
    warnings = []
    for on_device in caps.values():
        total = sum(cap for _, cap, _ in on_device)
        free = free_bytes(_existing(on_device[0][2]))
        if free is None:
            continue
        room = free + sum(_used(where) for _, _, where in on_device)
        if total > room:
            names = ", ".join(name for name, _, _ in on_device)
            warnings.append(ConfigError(str(config.path), "journal_max_bytes",
                                        f"the journal cap of {names} ({total:,} bytes) is more than the "
                                        f"{room:,} bytes its filesystem ({_existing(on_device[0][2])}) has for it; "
                                        f"at a full disk the shard stops reading before the cap applies: lower "
                                        f"journal_max_bytes or give the state directory more space"))
    return warnings
