"""The configuration: a TOML file read into frozen dataclasses.

``model`` holds the dataclasses and the value parsers (durations, sizes);
``reader`` validates a TOML file into them, naming file, key and fix for every
problem. This face loads a file. It may import only ``errors`` and ``logs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from shardctl import logs
from shardctl.config.model import Config
from shardctl.config.reader import read_config
from shardctl.errors import ConfigError, ConfigErrors

__all__ = ["check_config", "load_config"]


def check_config(path: str | Path, *, require_env: bool = False
                 ) -> tuple[Config | None, list[ConfigError], list[ConfigError]]:
    """Read a config and return (config or None, problems, warnings) without raising.

    An unset API-key or DSN variable is a warning, or a problem with ``require_env``.
    """
    config, reader = read_config(Path(path))
    problems = reader.problems + (reader.missing_env if require_env else [])
    warnings = reader.warnings + ([] if require_env else reader.missing_env)
    return (config if not problems else None), problems, warnings


def load_config(path: str | Path, *, require_env: bool = False,
                warn: Callable[[ConfigError], None] | None = None) -> Config:
    """Return the valid Config in ``path`` or raise ConfigErrors naming every problem.

    With ``require_env`` (``shardctl start``), warnings about unset API-key or
    DSN variables become errors; ``warn`` is called with each remaining
    warning (e.g. a password in ``database.dsn``). The config's secrets
    (``Config.secrets``) are registered for masking in every log line.
    """
    config, problems, warnings = check_config(path, require_env=require_env)
    if problems:
        raise ConfigErrors(problems)
    assert config is not None
    logs.register_secrets(config.secrets())
    if warn is not None:
        for warning in warnings:
            warn(warning)
    return config
