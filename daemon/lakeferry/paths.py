"""Destination paths: rendering the sink's path template and refusing unsafe results.

A destination is always a relative POSIX path *inside* the sink root. Anything that could
escape it or confuse a file system or a human reading a listing is refused with reason
``invalid_path`` rather than repaired, because a silently changed path is a lost file.
"""

from __future__ import annotations

import datetime as dt
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from lakeferry.errors import PermanentError, Reason
from lakeferry.messages import Event
from lakeferry.urls import filename_of

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
STAGING = ".lakeferry-tmp"
"""The folder at a sink's root that holds the temporary files of puts, one sub-folder per
process (:attr:`lakeferry.api.PluginContext.owner`): never beside landed files, where lake
readers would see them, and swept by the process that left them after a crash. Destinations
cannot start with it."""
STALE_TEMPORARY = 86400.0
"""Seconds after which any process's temporary file is taken as abandoned (its process is
gone for good) and swept."""
# Bidirectional overrides and zero-width characters make a name display as something else.
_DECEPTIVE = {
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d",
    "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff",
}  # fmt: skip


def _invalid(path: str, why: str) -> PermanentError:
    return PermanentError(Reason.INVALID_PATH, f"unsafe destination path {path[:200]!r}: {why}")


def safe_relative_path(path: str) -> str:
    """Return ``path`` normalised (NFC, ``/`` separators) or raise PermanentError(invalid_path)."""
    if not path:
        raise _invalid(path, "empty")
    norm = unicodedata.normalize("NFC", path)
    for ch in norm:
        cat = unicodedata.category(ch)
        if ch == "\x00" or (cat in ("Cc", "Cf") and ch not in _DECEPTIVE) or cat in ("Cs", "Co"):
            raise _invalid(path, f"control or invisible character U+{ord(ch):04X}")
        if ch in _DECEPTIVE:
            raise _invalid(path, f"deceptive character U+{ord(ch):04X}")
    if "\\" in norm:
        raise _invalid(path, "backslash")
    if norm.startswith("/"):
        raise _invalid(path, "absolute path")
    if len(norm) >= 2 and norm[1] == ":" and norm[0].isalpha():
        raise _invalid(path, "drive letter")
    parts = norm.split("/")
    if parts[0] == STAGING:
        raise _invalid(path, f"{STAGING}/ is reserved for the sink's temporary files")
    for part in parts:
        if part in ("", ".", ".."):
            raise _invalid(path, f"path component {part!r}")
        # Fullwidth dots and slashes (U+FF0E, U+FF0F, U+2025 …) become "..", "/" under NFKC,
        # which some file systems, tools and web frameworks apply: refuse what would escape.
        folded = unicodedata.normalize("NFKC", part)
        if folded in (".", "..") or "/" in folded or "\\" in folded:
            raise _invalid(path, f"component {part!r} folds to {folded!r} (Unicode compatibility)")
        if part != part.strip() or part.endswith("."):
            raise _invalid(path, "leading/trailing space or trailing dot in a component")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise _invalid(path, f"component longer than {MAX_COMPONENT_BYTES} bytes")
    if len(norm.encode()) > MAX_PATH_BYTES:
        raise _invalid(path, f"longer than {MAX_PATH_BYTES} bytes")
    return norm


class _SafeFormatter(string.Formatter):
    """str.format without attribute or item access to private names."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if "_" in field_name.split(".")[0][:1] or ".__" in field_name or "[_" in field_name:
            raise KeyError(field_name)
        return super().get_field(field_name, args, kwargs)


_FORMATTER = _SafeFormatter()
TEMPLATE_FIELDS = ("event", "date", "filename", "id")


class _EventView:
    """What ``{event.…}`` may reach in a template."""

    __slots__ = ("id", "metadata", "sha256", "size")

    def __init__(self, event: Event) -> None:
        self.id = event.id
        self.metadata = dict(event.metadata)
        self.sha256 = event.sha256 or ""
        self.size = event.size if event.size is not None else ""


def render_destination(template: str, event: Event, now: dt.datetime) -> str:
    """The event's ``path`` if given, else ``template`` rendered; always checked for safety.

    Template fields: ``{event.id}``, ``{event.metadata[key]}``, ``{event.sha256}``,
    ``{date:%Y/%m/%d}`` (event creation time, else ``now``), ``{filename}`` (last URL segment,
    percent-decoded; the event id when the URL has none), ``{id}`` (= event.id).
    """
    if event.path is not None:
        return safe_relative_path(event.path)
    filename = unquote(filename_of(event.url)) or event.id
    try:
        rendered = _FORMATTER.format(
            template,
            event=_EventView(event),
            date=event.created_at or now,
            filename=filename,
            id=event.id,
        )
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise PermanentError(
            Reason.INVALID_PATH,
            f"path template {template!r} failed for event {event.id!r}: {exc!r}",
        ) from exc
    return safe_relative_path(rendered)


def check_template(template: str) -> None:
    """Raise ValueError when ``template`` cannot render a safe destination for a typical event
    (an unknown field, a bad format, an absolute or escaping result)."""
    sample = Event(id="sample-id", url="https://example.org/a/file.bin", metadata={})
    try:
        render_destination(template, sample, dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    except PermanentError as exc:
        raise ValueError(str(exc)) from None
