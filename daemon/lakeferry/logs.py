"""Logging: structured JSON lines (journald-friendly) or plain text, and the level, set live.

Call sites pass context through ``extra={...}``; every extra key becomes a JSON field. URLs must
be passed through :func:`lakeferry.urls.redact_url` before they reach a log call.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ROOT = "lakeferry"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{name}")


def configure(level: str, fmt: str = "json") -> None:
    """Send lakeferry's logs to stdout in ``fmt``; safe to call again (SIGHUP)."""
    root = logging.getLogger(ROOT)
    root.setLevel(level.upper())
    root.propagate = False
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in root.handlers:
        if getattr(handler, "_lakeferry", False):
            handler.setFormatter(formatter)
            return
    handler = logging.StreamHandler(sys.stdout)
    handler._lakeferry = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    root.addHandler(handler)


def set_level(level: str) -> None:
    logging.getLogger(ROOT).setLevel(level.upper())


class Throttled:
    """Warnings that need attention, at most one per key every ``every`` seconds.

    A sink that fails makes every upload slot fail at once, again at each backoff: the first
    failure of a kind is a warning with its error text, the repeats within ``every`` seconds are
    counted and go to debug, and the next warning says how many there were (``repeats``).
    """

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._logger = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._repeats: dict[str, int] = {}

    def warning(self, key: str, msg: str, extra: dict[str, Any]) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._repeats[key] = self._repeats.get(key, 0) + 1
            self._logger.debug(msg, extra=extra)
            return
        self._last[key] = now
        repeats = self._repeats.pop(key, 0)
        self._logger.warning(msg, extra={**extra, "repeats": repeats} if repeats else extra)
