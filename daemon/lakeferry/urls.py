"""URL helpers: the scheme of a URL, and its redacted form for logs and the inventory.

Query strings and userinfo are secrets (SAS tokens, signatures, passwords): they never reach a
log line, a metric label or the inventory.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from lakeferry.errors import PermanentError, Reason

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUERY_OR_FRAGMENT = re.compile(r"[?#]")
_USERINFO_LIKE = re.compile(r"[^/\s]*@")
_URL_IN_TEXT = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s/?#@]*@)?([^\s?#]*)(\?[^\s#\"']*)?")


def scheme_of(url: str) -> str:
    """The URL's scheme, lowercase; ``""`` when there is none or the URL cannot be parsed."""
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def check_url(url: str) -> str:
    """The scheme of a URL fit to hand to a downloader; PermanentError(``malformed``) if unfit.

    Unfit: control characters (they could smuggle a header or a second request), no scheme,
    text ``urlsplit`` cannot parse (``http://[::1/``), a port that is not a number in 0-65535.
    Whether the host is acceptable is the downloader's business (and its SSRF guard's).
    """
    if _CONTROL.search(url):
        raise PermanentError(Reason.MALFORMED, "URL contains control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise PermanentError(Reason.MALFORMED, f"unparseable URL: {exc}") from None
    if not parts.scheme:
        raise PermanentError(Reason.MALFORMED, "URL without a scheme")
    return parts.scheme.lower()


def redact_url(url: str) -> str:
    """``url`` without userinfo, query string and fragment (``?…`` becomes ``?<redacted>``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "<unparseable url>"
    if not parts.scheme or (not parts.netloc and parts.scheme.lower() != "file"):
        return _redact_loosely(url)  # file:///a@b/c keeps its path
    netloc = host if ":" not in host else f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc = f"{netloc}:{port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _redact_loosely(url: str) -> str:
    """For text that is not a ``scheme://host`` URL (``h ttp://user:pw@h/``, ``user:pw@h/f``):
    drop the query and fragment and every ``…@`` token that could be userinfo."""
    base = _QUERY_OR_FRAGMENT.split(url, maxsplit=1)[0]
    query = "?<redacted>" if "?" in url else ""
    return _USERINFO_LIKE.sub("", base) + query


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


DEFAULT_PORTS = {"http": 80, "https": 443, "sftp": 22, "ftp": 21}


def origin_of(url: str) -> str:
    """``host:port`` of a URL (lower case, default port filled in); ``""`` when it has no host
    (``file://``): such downloads are not limited per origin."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return ""
    if not host:
        return ""
    port = port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"
