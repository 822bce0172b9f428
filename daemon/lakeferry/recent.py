"""The last failures, for the live view: what ``lakeferry top`` shows under "recent errors".

Kept apart from the live feed (a WebSocket server) so that the parts that record failures do
not import the server.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from lakeferry.urls import redact_text, redact_url


@dataclass
class RecentErrors:
    """The last failures (redacted when recorded)."""

    limit: int = 20
    items: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)

    def add(
        self, *, stage: str, event_id: str | None, reason: str, error: str, url: str | None
    ) -> None:
        self.items.append(
            {
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "stage": stage,
                "event_id": event_id,
                "reason": reason,
                "error": redact_text(error)[:300],
                "url": redact_url(url) if url else None,
            }
        )
        while len(self.items) > self.limit:
            self.items.popleft()
