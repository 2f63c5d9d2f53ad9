"""Run a module under cProfile in every thread: ``python -m shardctl.bench.profile PREFIX MODULE ARGS...``.

``python -m cProfile`` sees the main thread only, but a worker spends much
of its time in its committer thread (pgcopy encoding, COPY). This wrapper
profiles the main thread and every thread started afterwards, and writes
``PREFIX.<thread name>.prof`` for each when it ends (threads still running at
exit are written from an atexit hook). ``top_functions`` reads them back.
"""

from __future__ import annotations

import atexit
import cProfile
import io
import pstats
import runpy
import sys
import threading
from pathlib import Path
from typing import Any

_profiles: dict[str, cProfile.Profile] = {}


def _dump_all(prefix: str) -> None:
    for name, prof in list(_profiles.items()):
        prof.disable()
        prof.dump_stats(f"{prefix}.{name}.prof")


def _install(prefix: str) -> None:
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        _profiles[self.name] = prof
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    setattr(threading.Thread, "run", run)  # noqa: B010 - every thread started from now on is profiled
    atexit.register(_dump_all, prefix)


def top_functions(path: Path, limit: int = 15) -> list[dict[str, Any]]:
    """The ``limit`` functions with the most own time in a .prof file: name, calls, tottime, cumtime, share."""
    stats = pstats.Stats(str(path), stream=io.StringIO())
    # ``total_tt`` and ``stats`` are pstats' documented-by-use attributes, not in its type stubs.
    total = getattr(stats, "total_tt") or 1e-9  # noqa: B009
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in getattr(stats, "stats").items():  # noqa: B009
        where = f"{Path(file).name}:{line}" if line else file
        rows.append({"function": f"{func} ({where})", "calls": calls, "tottime_s": round(tottime, 3),
                     "cumtime_s": round(cumtime, 3), "share": round(tottime / total, 4)})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:limit]


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python -m shardctl.bench.profile PREFIX MODULE [ARGS...]", file=sys.stderr)
        return 2
    prefix, module = sys.argv[1], sys.argv[2]
    sys.argv = [module] + sys.argv[3:]
    _install(prefix)
    main_prof = cProfile.Profile()
    _profiles["MainThread"] = main_prof
    main_prof.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        main_prof.disable()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
