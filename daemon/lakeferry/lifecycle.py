"""What the supervisor and every stage share about running: when to drain, what is in flight.

Kept apart from the stages and the pipeline so that both can use it without importing each
other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class Lifecycle:
    """Shared by the supervisor and every stage: tells them when to drain and how long for."""

    shutdown_grace: float
    draining: trio.Event = field(default_factory=trio.Event)

    def drain(self) -> None:
        self.draining.set()


@dataclass
class ActiveCount:
    """Records a stage is processing right now (the limiter also counts a fetch in waiting)."""

    n: int = 0
