"""URL helpers: the scheme of a URL, and its redacted form for logs and the inventory.

Query strings and userinfo are secrets (SAS tokens, signatures, passwords): they never reach a
log line, a metric label or the inventory.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s/?#@]*@)?([^\s?#]*)(\?[^\s#\"']*)?")


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()


def redact_url(url: str) -> str:
    """``url`` without userinfo, query string and fragment (``?…`` becomes ``?<redacted>``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "<unparseable url>"
    netloc = host if ":" not in host else f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc = f"{netloc}:{port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def filename_of(url: str) -> str:
    """The last path segment of ``url`` (may be empty)."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return ""
    return path.rstrip("/").rsplit("/", 1)[-1]


def redact_text(text: str) -> str:
    """``text`` with every URL in it stripped of userinfo and query string (error messages)."""

    def scrub(m: re.Match[str]) -> str:
        return m.group(1) + m.group(3) + ("?<redacted>" if m.group(4) else "")

    return _URL_IN_TEXT.sub(scrub, text)
