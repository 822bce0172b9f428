"""What makes a raw event acceptable: one set of rules for the intake and for ``lakeferry submit``.

A raw event is admitted when it is at most ``ingest.max_event_bytes`` long, decodes into an
:class:`~lakeferry.messages.Event` (``id``, ``url``, ``sha256`` as lowercase hex ...), its URL
parses and has a scheme some downloader serves, and its destination (the event's ``path`` or the
sink's ``path_template``) renders to a safe path. The intake dead-letters a refused event with
the refusal's reason; ``lakeferry submit`` refuses it before sending anything (exit 2), so an
operator learns at once what the daemon would only say in the DLQ.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import msgspec

from lakeferry.config import LoadedConfig
from lakeferry.errors import PermanentError, Reason
from lakeferry.messages import Event, decode_event
from lakeferry.paths import render_destination
from lakeferry.registry import Registry
from lakeferry.urls import check_url


class Refusal(PermanentError):
    """A raw event the rules refuse (the reason is its DLQ reason)."""


@dataclass(frozen=True)
class Admission:
    """The rules, read from the config once."""

    max_event_bytes: int
    template: str | None
    """The sink's ``path_template`` (None: the sink renders destinations itself at upload)."""
    schemes: frozenset[str]
    """URL schemes some configured downloader serves (empty: not checked)."""

    def admit(self, raw: bytes, received: dt.datetime) -> tuple[Event, str | None]:
        """The event and its destination (None when the sink renders it), or a Refusal."""
        event = self.decode(raw)
        return event, self.check(event, received)

    def decode(self, raw: bytes) -> Event:
        """The size limit and the event's own schema."""
        if len(raw) > self.max_event_bytes:
            raise Refusal(
                Reason.MALFORMED,
                f"event of {len(raw)} bytes is larger than ingest.max_event_bytes "
                f"({self.max_event_bytes} bytes)",
            )
        try:
            return decode_event(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Refusal(Reason.MALFORMED, str(exc)) from None

    def check(self, event: Event, received: dt.datetime) -> str | None:
        """The checks after decoding: URL, scheme, destination."""
        try:
            scheme = check_url(event.url)
        except PermanentError as exc:
            raise Refusal(exc.reason, f"url: {exc}") from None
        if self.schemes and scheme not in self.schemes:
            raise Refusal(
                Reason.UNSUPPORTED_SCHEME,
                f"url: no downloader for scheme {scheme!r} "
                f"(have: {', '.join(sorted(self.schemes))})",
            )
        if self.template is None:
            return None
        try:
            return render_destination(self.template, event, event.created_at or received)
        except PermanentError as exc:
            raise Refusal(exc.reason, str(exc)) from None


def admission(config: LoadedConfig, registry: Registry) -> Admission:
    """The rules of this config: its size limit, its sink's template, its downloaders."""
    template = getattr(config.sink.settings, "path_template", None)
    schemes = {
        scheme for kind in config.downloaders for scheme in registry.get("downloader", kind).schemes
    }
    return Admission(
        max_event_bytes=int(config.core.ingest.max_event_bytes),
        template=template if isinstance(template, str) else None,
        schemes=frozenset(schemes),
    )
