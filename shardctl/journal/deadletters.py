"""Malformed frames set aside per shard, and reading them back.

A dead letter is one JSON line in ``STATE_DIR/shards/NAME/deadletters.jsonl``:
``{"at": unix time, "reason": why it was set aside, "frame": the frame as received,
"frame_bytes": its length in bytes}``, with registered secrets (``shardctl.logs``)
masked; the file is private (0600). Only the first ``FRAME_KEEP`` characters of a
frame (and ``REASON_KEEP`` of a reason) are kept, so one entry takes at most
about 26 KiB.

The file is capped: when the next entry would take it past ``max_bytes``
(``dead_letter_max_bytes``), it becomes ``deadletters.jsonl.1`` (replacing the
previous one, whose entries are dropped and counted) and a new file starts. So
at most twice the cap is on disk, and the newest entries are always kept.
Nothing is ever written to the database from here; the files are for people.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import orjson

from shardctl.config.model import MIN_DEAD_LETTER_BYTES, Config, ShardSettings
from shardctl.logs import mask_secrets
from shardctl.private import private_dir, private_open

log = logging.getLogger("shardctl.worker")

FILE_NAME = "deadletters.jsonl"
#: Characters of a frame kept in its entry (``frame_bytes`` says how long it was).
FRAME_KEEP = 4096
#: Characters of a reason kept in its entry.
REASON_KEEP = 200


def rotated_path(path: Path) -> Path:
    """Where the previous dead-letter file is kept: ``deadletters.jsonl.1``."""
    return path.with_name(path.name + ".1")


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


class DeadLetters:
    """Appends malformed frames to the shard's capped dead-letter file; logs a summary at most once per interval.

    ``count`` is the number of entries this object wrote, ``dropped`` the
    number of entries (of any process) it deleted by rotating at the cap.
    """

    def __init__(self, path: Path, log_interval: float, *,
                 max_bytes: int = ShardSettings.dead_letter_max_bytes) -> None:
        if max_bytes < MIN_DEAD_LETTER_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_DEAD_LETTER_BYTES}, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.count = 0
        self.dropped = 0
        self._log_interval = log_interval
        self._unlogged = 0
        self._dropped_logged = 0
        self._last_reason = ""
        self._next_log = 0.0
        self._file: Any = None
        self._size = 0
        self._refused = False

    def add(self, frame: bytes | str, reason: str, now: float) -> None:
        """Record one frame and why it was set aside (decoded leniently, secrets masked, cut to FRAME_KEEP)."""
        raw = frame if isinstance(frame, bytes) else frame.encode("utf-8", "replace")
        text = mask_secrets(frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame)
        entry = orjson.dumps({"at": time.time(), "reason": mask_secrets(reason)[:REASON_KEEP],
                              "frame": text[:FRAME_KEEP], "frame_bytes": len(raw)}) + b"\n"
        try:
            if self._file is None:
                self._open()
            if self._size and self._size + len(entry) > self.max_bytes:
                self._rotate()
            self._file.write(entry)
        except OSError as exc:  # a full disk: the entry is not kept, and counted as dropped
            self._close_quietly()
            self.dropped += 1
            if not self._refused:
                log.error("cannot keep dead letters in %s (%s): counting them as dropped until it can",
                          self.path, exc.strerror)
            self._refused = True
        else:
            self._size += len(entry)
            self._refused = False
        self.count += 1
        self._unlogged += 1
        self._last_reason = reason
        if now >= self._next_log:
            self.flush_log(now)

    def _close_quietly(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _open(self) -> None:
        private_dir(self.path.parent)
        fd = private_open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(fd).st_size
        self._file = os.fdopen(fd, "ab", buffering=0)

    def _rotate(self) -> None:
        """Current file → ``.1`` (the old ``.1`` and its entries go: counted in ``dropped``), then a new file.

        A current file larger than the cap (an older version's, or one written
        under a larger cap) is deleted instead, so ``.1`` never exceeds the cap.
        """
        self._file.close()
        rotated = rotated_path(self.path)
        self.dropped += _count_lines(rotated)
        try:
            if self._size > self.max_bytes:
                self.dropped += _count_lines(self.path)
                self.path.unlink()
                rotated.unlink(missing_ok=True)
            else:
                os.replace(self.path, rotated)
        except FileNotFoundError:
            pass  # removed by hand meanwhile: nothing to keep
        self._open()

    def flush_log(self, now: float) -> None:
        """Log what was set aside since the last line (and what the cap dropped), if anything."""
        if self._unlogged:
            newly_dropped = self.dropped - self._dropped_logged
            log.warning("set aside %d malformed frame(s) in %s (last: %s)%s", self._unlogged, self.path,
                        self._last_reason, f"; {newly_dropped} older one(s) dropped at dead_letter_max_bytes"
                        if newly_dropped else "")
            self._unlogged = 0
            self._dropped_logged = self.dropped
            self._next_log = now + self._log_interval

    def close(self) -> None:
        self.flush_log(float("inf"))
        if self._file is not None:
            self._file.close()
            self._file = None


def dead_letter_path(config: Config, shard: str) -> Path:
    return config.shard_dir(shard) / FILE_NAME


def read_all_dead_letters(path: Path) -> Iterator[dict[str, Any]]:
    """Yield every kept entry of a shard, oldest first: the rotated file's (``.1``), then the current file's."""
    yield from read_dead_letters(rotated_path(path))
    yield from read_dead_letters(path)


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
