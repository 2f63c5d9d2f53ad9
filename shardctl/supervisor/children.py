"""One-off child processes of the supervisor (maintenance, the asset-name fill): bounded, killed on cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Sequence

log = logging.getLogger("shardctl.supervisor")


async def run_child(args: Sequence[str], dsn: str, timeout: float, what: str) -> int | None:
    """Run ``python -m ARGS`` with ``SHARDCTL_DSN=dsn``; its exit code, or None when it could not run in time.

    A child that outlives ``timeout`` is killed; cancelling kills it too. Every failure is logged
    as one line naming ``what``; none is raised.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args, env={**os.environ, "SHARDCTL_DSN": dsn}, start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        log.warning("cannot start %s: %s; retrying next time", what, exc)
        return None
    try:
        code = await asyncio.wait_for(process.wait(), timeout=timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        log.warning("%s took longer than %gs and was stopped; retrying next time", what, timeout)
        return None
    if code != 0:
        log.warning("%s failed with exit code %d; retrying next time", what, code)
    return code
