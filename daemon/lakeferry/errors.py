"""Error types that steer the pipeline, and the reason codes they carry.

The stages look at an error's *class* to decide what happens to a message:

- :class:`TransientError`: try again later (the download stage climbs the retry ladder,
  the upload stage backs off in place).
- :class:`PermanentError`: the message can never succeed; it goes to the dead-letter topic.

Every error carries a short machine-readable ``reason`` (a :class:`Reason` value or a plugin's
own string) that becomes the DLQ reason code and a metric label.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Reason codes used by the core. Plugins may use their own short snake_case strings."""

    MALFORMED = "malformed"
    NOT_FOUND = "not_found"
    HTTP_CLIENT_ERROR = "http_client_error"
    HTTP_SERVER_ERROR = "http_server_error"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    BLOCKED = "blocked"
    TOO_LARGE = "too_large"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    INVALID_PATH = "invalid_path"
    DUPLICATE_ID = "duplicate_id"
    RETRIES_EXHAUSTED = "retries_exhausted"
    SINK_REJECTED = "sink_rejected"
    CACHE_MISSING = "cache_missing"
    INTERNAL = "internal"


class LakeferryError(Exception):
    """Base class of every error lakeferry raises on purpose."""


class ConfigError(LakeferryError):
    """The configuration is invalid. ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class PipelineError(LakeferryError):
    """An error that decides the fate of one message. Do not raise this class directly."""

    transient: bool = False

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = str(reason)
        self.retry_after = retry_after


class TransientError(PipelineError):
    """Worth trying again later: timeouts, resets, 5xx, 429, DNS failures, sink throttling."""

    transient = True


class PermanentError(PipelineError):
    """Will never succeed: 4xx, malformed events, blocked URLs, size limits, bad checksums."""

    transient = False


class BusError(LakeferryError):
    """The message bus failed (cannot open, cannot write, broker unreachable)."""


class StageCrashed(LakeferryError):
    """A stage crashed too often within the restart window; the process must end."""


class StartRefused(LakeferryError):
    """The daemon cannot start here and now as configured (its state folder is owned by another
    process, a listen address is taken). The message names the problem and the fix; the process
    exits 2, which the systemd units do not restart."""
