"""``/healthz`` and ``/readyz``: what a load balancer or a probe asks the daemon.

- ``/healthz``: the process and its event loop answer (the request is served by the same trio
  loop that runs the stages: a blocked loop answers nothing).
- ``/readyz``: the stages have started and are not draining, the bus is reachable
  (``lakeferry_bus_up``), and the sink's circuit breaker is closed
  (``lakeferry_upload_breaker_open``, in a process that uploads). Not ready: 503 and the
  reasons, one per line.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from lakeferry.livefeed import samples


@dataclass
class Readiness:
    """What the supervisor tells the console about its stages."""

    started: bool = False
    """Every stage this process runs has started (consumes)."""
    draining: bool = False
    """A stop signal came: the stages finish what they hold and stop."""

    def problems(self, registry: CollectorRegistry) -> list[str]:
        """Why the daemon is not ready (empty: it is)."""
        out = []
        if not self.started:
            out.append("stages: still starting")
        if self.draining:
            out.append("stages: draining (stop signal)")
        if any(value < 1 for _, value in samples(registry, "lakeferry_bus_up")):
            out.append("bus: unreachable (see the log for the bus's last error)")
        if any(value > 0 for _, value in samples(registry, "lakeferry_upload_breaker_open")):
            out.append("sink: circuit breaker open (uploads wait for the sink)")
        return out
