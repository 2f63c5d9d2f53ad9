"""Reading one value of a config file: typed, checked, every problem collected as a ``ConfigError``."""

from __future__ import annotations

import difflib
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, get_args

from shardctl.config.model import (
    MIN_DEAD_LETTER_BYTES,
    FsyncPolicy,
    OnFull,
    ShardSettings,
    parse_duration,
    parse_size,
)
from shardctl.errors import ConfigError
from shardctl.markethours import parse_market_hours

#: The file's top-level keys (tables and plain keys).
TOP_KEYS = ("state_dir", "database", "source", "feed", "tables", "timescaledb", "defaults", "supervisor", "backfill",
            "cluster", "shards", "audit")
_SIZE_SETTINGS = frozenset(("journal_segment_bytes", "journal_max_bytes", "dead_letter_max_bytes"))
#: Durations where 0 means "none" (no drain on stop, no retention of committed journal records).
_ZERO_ALLOWED = frozenset(("stop_drain", "journal_retain"))
_CHOICE_SETTINGS: dict[str, tuple[str, ...]] = {
    "journal_on_full": get_args(OnFull),
    "journal_fsync": get_args(FsyncPolicy),
}


class ValueReader:
    """Collects every problem while converting the raw TOML tree."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[ConfigError] = []
        self.warnings: list[ConfigError] = []
        #: Unset environment variables: warnings for `validate`, errors for `start`.
        self.missing_env: list[ConfigError] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigError(str(self.path), key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(ConfigError(str(self.path), key, message))

    def env_missing(self, key: str, message: str) -> None:
        self.missing_env.append(ConfigError(str(self.path), key, message))

    def table(self, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = raw.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, dict):
            self.problem(key, f"must be a table ([{key}]), got {type(value).__name__}")
            return {}
        return value

    def unknown_keys(self, raw: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in raw:
            if key in allowed:
                continue
            where = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(key, allowed, n=1)
            if close:
                hint = f"did you mean '{close[0]}'?"
            elif prefix and key in TOP_KEYS and not isinstance(raw[key], dict):
                # TOML puts every key after [section] into that section.
                hint = f"'{key}' is a top-level key: move it above the first [section] of the file"
            else:
                hint = f"allowed keys: {', '.join(allowed)}"
            self.problem(where, f"unknown key; {hint}")

    def string(self, raw: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
        value = raw.get(key, default)
        if value is not None and not (isinstance(value, str) and value.strip()):
            self.problem(where, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def number(self, raw: Mapping[str, Any], key: str, where: str, default: float, *, integer: bool,
               minimum: float) -> Any:
        value = raw.get(key, default)
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if integer else "a number"
            self.problem(where, f"must be {kind}, got {value!r}")
            return default
        if not math.isfinite(value):
            self.problem(where, f"must be a finite number, got {value!r}")
            return default
        if value < minimum:
            self.problem(where, f"must be at least {minimum:g}, got {value!r}")
            return default
        return value

    def duration(self, raw: Mapping[str, Any], key: str, where: str, default: float, *,
                 zero_allowed: bool = False) -> float:
        if key not in raw:
            return default
        try:
            seconds = parse_duration(raw[key])
        except ValueError as exc:
            self.problem(where, str(exc))
            return default
        if seconds < 0 or (seconds == 0 and not zero_allowed):
            self.problem(where, f"must be {'zero or more' if zero_allowed else 'longer than zero'}, got {raw[key]!r}")
            return default
        return seconds

    def settings(self, raw: Mapping[str, Any], prefix: str, base: ShardSettings) -> ShardSettings:
        values: dict[str, Any] = {}
        for f in fields(ShardSettings):
            if f.name not in raw:
                continue
            where = f"{prefix}.{f.name}"
            if f.name in ("batch_size", "max_pending_rows"):
                values[f.name] = self.number(raw, f.name, where, getattr(base, f.name), integer=True, minimum=1)
            elif f.name == "market_hours":
                try:
                    values[f.name] = parse_market_hours(str(raw[f.name]))
                except ValueError as exc:
                    self.problem(where, str(exc))
            elif f.name == "slow_below":
                values[f.name] = float(self.number(raw, f.name, where, base.slow_below, integer=False, minimum=0))
                if values[f.name] >= 1:
                    self.problem(where, f"is a fraction of the symbol's normal tick rate (0 < x < 1; 0 turns "
                                        f"slowdown detection off), got {raw[f.name]!r}")
                    values[f.name] = base.slow_below
            elif f.name in _SIZE_SETTINGS:
                try:
                    values[f.name] = parse_size(raw[f.name])
                except ValueError as exc:
                    self.problem(where, str(exc))
            elif f.name in _CHOICE_SETTINGS:
                if raw[f.name] not in _CHOICE_SETTINGS[f.name]:
                    self.problem(where, f"must be one of {', '.join(map(repr, _CHOICE_SETTINGS[f.name]))}, "
                                        f"got {raw[f.name]!r}")
                else:
                    values[f.name] = raw[f.name]
            else:
                values[f.name] = self.duration(raw, f.name, where, getattr(base, f.name),
                                               zero_allowed=f.name in _ZERO_ALLOWED)
        result = ShardSettings(**{**base.__dict__, **values})
        if result.journal_max_bytes < 2 * result.journal_segment_bytes and (
                "journal_max_bytes" in raw or "journal_segment_bytes" in raw):
            self.problem(f"{prefix}.journal_max_bytes", "must be at least twice journal_segment_bytes")
        if "dead_letter_max_bytes" in values and result.dead_letter_max_bytes < MIN_DEAD_LETTER_BYTES:
            self.problem(f"{prefix}.dead_letter_max_bytes", "must be at least 64KiB (a single dead letter may "
                                                            f"take up to 26 KiB), got {raw['dead_letter_max_bytes']!r}")
        # Report the pair only where it is set, not again in every shard that inherits it.
        if result.reconnect_max < result.reconnect_initial and (
                "reconnect_max" in raw or "reconnect_initial" in raw):
            self.problem(f"{prefix}.reconnect_max", "must not be shorter than reconnect_initial")
        return result
