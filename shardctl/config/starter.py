"""The configs shipped inside the package: the demo's and the starting config ``shardctl init`` writes.

Both live in the repository's top-level ``config/`` (``demo.toml``,
``starter.toml``), shipped as the package ``shardctl.examples``, so the
clone and the wheel read the very same files. May import only ``errors``.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from shardctl.errors import ShardctlError, UsageError

__all__ = ["DEMO_CONFIG", "STARTER_CONFIG", "demo_config_text", "example_text", "write_starter"]

DEMO_CONFIG = "demo.toml"
STARTER_CONFIG = "starter.toml"
#: The demo's ports, as demo.toml writes them.
DEMO_FEED_PORT = 8765
DEMO_METRICS_PORT = 9108


def example_text(name: str) -> str:
    """The text of a shipped example config (``demo.toml``, ``starter.toml``, ``prod.toml``)."""
    try:
        return resources.files("shardctl.examples").joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        raise ShardctlError(f"the example config {name} is missing from this installation of shardctl; "
                            "reinstall it") from None


def demo_config_text(*, feed_port: int = DEMO_FEED_PORT, metrics_port: int = DEMO_METRICS_PORT) -> str:
    """demo.toml with the local feed on ``feed_port`` (and the source URL with it) and the status page on
    ``metrics_port``; the shipped text itself when both are the defaults."""
    text = example_text(DEMO_CONFIG)
    edits = ((rf"(?m)^port = {DEMO_FEED_PORT}\b", f"port = {feed_port}"),
             (rf"ws://127\.0\.0\.1:{DEMO_FEED_PORT}/", f"ws://127.0.0.1:{feed_port}/"),
             (rf"(?m)^metrics_port = {DEMO_METRICS_PORT}\b", f"metrics_port = {metrics_port}"))
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text, count=1)
        if count != 1:
            raise ShardctlError(f"the shipped {DEMO_CONFIG} has no line matching {pattern!r}; cannot set its ports")
    return text


def write_starter(path: Path, *, force: bool = False) -> None:
    """Write the starting config to ``path`` (mode 0644); UsageError when it exists and not ``force``."""
    text = example_text(STARTER_CONFIG)
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it, or name another file")
    if path.is_dir():
        raise UsageError(f"{path} is a directory; name a file, e.g. {path / 'shardctl.toml'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise UsageError(f"{path} already exists; pass --force to overwrite it, or name another file") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
