"""The supervisor's ``[audit]`` schedule: ``shardctl audit`` every ``interval`` over the last ``window``.

``AuditSchedule.loop`` runs each audit in a thread (the database reads and,
with ``online``, REST requests at the backfill's credit rate block), keeps
the last result as a ``LastAudit`` for ``/metrics``, logs a line per run,
and never lets a failure end the loop (it is logged and shown as failed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from shardctl.audit.run import AuditReport, run_audit, unscheduled_note
from shardctl.config.model import LOCAL_FEED_API_KEY, AuditConfig, Config
from shardctl.errors import ShardctlError

log = logging.getLogger("shardctl.supervisor")

#: Seconds after start before the first audit (the workers first get to connect).
FIRST_AUDIT = 30.0


@dataclass(frozen=True)
class LastAudit:
    """The last scheduled audit: when it finished, its report, or why it failed."""

    finished_at: float
    report: AuditReport | None = None
    error: str | None = None


class AuditSchedule:
    """Runs the config's ``[audit]`` (see the module docstring); ``last`` is None until one finished."""

    def __init__(self, config_of: Callable[[], Config], settings: AuditConfig, dsn: str,
                 api_key: str | None) -> None:
        #: The supervisor's config as it is now: a reload changes which symbols the next audit covers.
        self.config_of = config_of
        self.settings, self.dsn, self.api_key = settings, dsn, api_key
        self.last: LastAudit | None = None

    def run_once(self) -> LastAudit:
        """One audit now (blocking): the whole minutes of the last ``window``."""
        last = int(time.time() // 60) - 1
        first = last - max(1, int(self.settings.window // 60)) + 1
        try:
            report = run_audit(self.config_of(), self.dsn, first, last, online=self.settings.online,
                               api_key=self.api_key)
        except ShardctlError as exc:
            log.error("audit failed: %s", exc)
            return LastAudit(time.time(), error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in one audit must not end the schedule
            log.exception("audit failed unexpectedly")
            return LastAudit(time.time(), error=f"{type(exc).__name__}: {exc}")
        totals = report.totals
        log.info("audit of the last %d minute(s) x %d symbol(s) in %.1fs: %s", report.minutes, len(report.symbols),
                 report.seconds, ", ".join(f"{c.value} {n}" for c, n in totals.items()))
        return LastAudit(time.time(), report)

    async def loop(self) -> None:
        """Audit every ``interval`` (the first after ``FIRST_AUDIT`` seconds at most); cancel to stop."""
        delay = min(FIRST_AUDIT, self.settings.interval)
        while True:
            await asyncio.sleep(delay)
            delay = self.settings.interval
            self.last = await asyncio.to_thread(self.run_once)


def schedule_for(config_of: Callable[[], Config], dsn: str, api_key_of: dict[str, str]) -> AuditSchedule | None:
    """The config's schedule, or None without ``[audit]``; the key is the source's (the local feed's by default)."""
    config = config_of()
    if config.audit is None:
        return None
    note = unscheduled_note(config)
    if note:
        log.warning("%s", note.removeprefix("note: "))
    key = api_key_of.get(config.source.api_key_env) or (LOCAL_FEED_API_KEY if config.source.is_local else None)
    return AuditSchedule(config_of, config.audit, dsn, key)
