"""Malformed frames set aside per shard, and reading them back.

A dead letter is one JSON line in ``STATE_DIR/shards/NAME/deadletters.jsonl``:
``{"at": unix time, "reason": why it was set aside, "frame": the frame as received}``,
with registered secrets (``shardctl.logs``) masked; the file is private (0600).
Nothing is ever written to the database from here; the file is for people.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import orjson

from shardctl.config.model import Config
from shardctl.logs import mask_secrets
from shardctl.private import private_dir, private_open

log = logging.getLogger("shardctl.worker")

FILE_NAME = "deadletters.jsonl"


class DeadLetters:
    """Appends malformed frames to the shard's dead-letter file; logs a summary at most once per interval."""

    def __init__(self, path: Path, log_interval: float) -> None:
        self.path = path
        self.count = 0
        self._log_interval = log_interval
        self._unlogged = 0
        self._last_reason = ""
        self._next_log = 0.0
        self._file: Any = None

    def add(self, frame: bytes | str, reason: str, now: float) -> None:
        """Record one frame and why it was set aside (decoded leniently, registered secrets masked)."""
        if self._file is None:
            private_dir(self.path.parent)
            self._file = os.fdopen(private_open(self.path, os.O_WRONLY | os.O_APPEND), "ab", buffering=0)
        text = mask_secrets(frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame)
        self._file.write(orjson.dumps({"at": time.time(), "reason": mask_secrets(reason),
                                       "frame": text[:65536]}) + b"\n")
        self.count += 1
        self._unlogged += 1
        self._last_reason = reason
        if now >= self._next_log:
            self.flush_log(now)

    def flush_log(self, now: float) -> None:
        if self._unlogged:
            log.warning("set aside %d malformed frame(s) in %s (last: %s)", self._unlogged, self.path,
                        self._last_reason)
            self._unlogged = 0
            self._next_log = now + self._log_interval

    def close(self) -> None:
        self.flush_log(float("inf"))
        if self._file is not None:
            self._file.close()


def dead_letter_path(config: Config, shard: str) -> Path:
    return config.shard_dir(shard) / FILE_NAME


def read_dead_letters(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the entries of one dead-letter file, oldest first; a line that is not JSON is shown as-is."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                yield {"at": None, "reason": "unreadable dead-letter line", "frame": line.decode("utf-8", "replace")}
