"""What a stage is, declared once: :class:`StageSpec`.

Each stage module (``lakeferry/stages/<name>.py``) ends with its ``SPEC``; the catalog
(:mod:`lakeferry.stages.catalog`) lists them in the order an event passes them. Everything else
derives from that list: which components a process builds (:attr:`StageSpec.uses`), its
limiters and their live sizes (:attr:`Consumes.capacity`), ``lakeferry run --stages``, the lag
the supervisor reports (:attr:`Consumes.topics`), which settings a SIGHUP applies live
(:attr:`StageSpec.live_keys`), and the systemd templates a test holds to the list.

This module sits outside ``stages/`` so that the pipeline can build from specs without
importing any stage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import trio

from lakeferry.config import Config

if TYPE_CHECKING:
    from lakeferry.pipeline import Pipeline

Uses = Literal["cache", "sink", "inventory", "source", "downloader", "ledger"]
"""The components a stage can use; a process builds only those its stages use."""


class StageFn(Protocol):
    def __call__(
        self, pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = ...
    ) -> Awaitable[None]: ...


def _always(core: Config) -> bool:
    return True


@dataclass(frozen=True)
class Consumes:
    """One consumer a stage runs: group ``<bus.group>.<group>`` on ``topics``, with a limiter
    of ``capacity`` tokens (both read from the running config; the capacity again on reload)."""

    group: str
    topics: Callable[[Config], list[str]]
    capacity: Callable[[Config], int]
    enabled: Callable[[Config], bool] = _always
    """Whether the config turns this consumer on (the events recorder: ``ingest.events_table``)."""
    intake: Callable[[Config], int] | None = None
    """When set, how many records the consumer holds at once (its own limiter); the handler
    then takes a ``capacity`` token itself, when it is ready to work (the download stage: a
    task waiting for its origin holds no download slot). Unset: one limiter for both."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str
    """One line: what the stage does (``lakeferry run --help``, docs)."""
    run: StageFn
    consumes: tuple[Consumes, ...]
    """The first is the stage's own (group = name): its gauges are the stage's."""
    uses: frozenset[Uses]
    live_keys: frozenset[str] = frozenset()
    """Settings the stage reads while running: a SIGHUP applies them without a restart."""

    @property
    def main(self) -> Consumes:
        return self.consumes[0]
