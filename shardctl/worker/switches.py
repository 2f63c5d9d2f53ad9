"""The worker's test and benchmark switches, read from the environment once, by ``main``.

    SHARDCTL_LATENCY_LOG=PATH       the bench: log each tick's arrival-to-commit latency to PATH
    SHARDCTL_COPY_ENCODER=pgcopy    the bench's "before": encode COPY rows with pgcopy's formatters
    SHARDCTL_CRASH_AT=POINT[:N]     fault tests: SIGKILL at a crash point (``shardctl.crashpoints``)

None of them is for production; each part gets its switch as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shardctl import crashpoints
from shardctl.crashpoints import NO_CRASHES, CrashPoints
from shardctl.errors import UsageError

LATENCY_LOG_ENV = "SHARDCTL_LATENCY_LOG"
ENCODER_ENV = "SHARDCTL_COPY_ENCODER"


@dataclass(frozen=True)
class Switches:
    latency_log: Path | None = None
    pgcopy_encoder: bool = False
    crash_points: CrashPoints = NO_CRASHES

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Switches:
        """The switches ``environ`` sets; UsageError for a value that names nothing."""
        encoder = environ.get(ENCODER_ENV, "fast")
        if encoder not in ("fast", "pgcopy"):
            raise UsageError(f"{ENCODER_ENV}={encoder!r}: use fast (the default) or pgcopy")
        try:
            crash = CrashPoints(environ.get(crashpoints.ENV, ""))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        latency = environ.get(LATENCY_LOG_ENV)
        return cls(latency_log=Path(latency) if latency else None, pgcopy_encoder=encoder == "pgcopy",
                   crash_points=crash)
