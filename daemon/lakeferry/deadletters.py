"""The one way a message is dead-lettered, so every DLQ record has the same shape.

:class:`DeadLetters` builds the letter (reason, error, stage, the task or the raw bytes, keyed
by event id), puts it on the DLQ topic, counts it (``lakeferry_dlq_total``), shows it in the
live view's recent errors, and logs it at warning. Stages hold one; they never write to the DLQ
topic themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from lakeferry.bus.base import OutgoingRecord, Producer, Record
from lakeferry.errors import Reason
from lakeferry.logs import get_logger
from lakeferry.messages import DLQ, DeadLetter, DownloadTask, TopicCodec, utcnow
from lakeferry.metrics import Metrics
from lakeferry.recent import RecentErrors
from lakeferry.records import event_key, task_headers

log = get_logger("pipeline")

M = TypeVar("M")


class DeadLetters:
    def __init__(
        self,
        producer: Producer,
        topic: Callable[[], str],
        metrics: Metrics,
        errors: RecentErrors,
    ) -> None:
        self.producer = producer
        self.topic = topic
        """The DLQ topic's name, read when a letter is written."""
        self.metrics = metrics
        self.errors = errors

    def record(
        self,
        *,
        stage: str,
        reason: str,
        error: str,
        origin_topic: str,
        task: DownloadTask | None = None,
        raw: bytes | None = None,
        source: str | None = None,
        key: bytes | None = None,
    ) -> OutgoingRecord:
        """The DLQ record for one message (keyed by event id unless ``key`` says otherwise),
        for a caller that sends it together with other records."""
        letter = DeadLetter(
            reason=reason,
            error=error[:4000],
            stage=stage,
            dead_at=utcnow(),
            origin_topic=origin_topic,
            task=task,
            raw=raw,
            source=source,
        )
        if key is None and task is not None:
            key = event_key(task.event.id)
        headers = task_headers(task, origin_topic) if task is not None else {}
        return OutgoingRecord(self.topic(), DLQ.encode(letter), key, headers)

    async def send(
        self,
        *,
        stage: str,
        reason: str,
        error: str,
        origin_topic: str,
        task: DownloadTask | None = None,
        raw: bytes | None = None,
        key: bytes | None = None,
    ) -> None:
        """Put one message on the DLQ; returns once it is on the bus."""
        record = self.record(
            stage=stage, reason=reason, error=error, origin_topic=origin_topic,
            task=task, raw=raw, key=key,
        )  # fmt: skip
        await self.producer.send_many([record])
        self.metrics.dead_lettered(stage, reason)
        self.errors.add(
            stage=stage, reason=reason, error=error,
            event_id=task.event.id if task else None, url=task.event.url if task else None,
        )  # fmt: skip
        log.warning(
            "dead-lettered",
            extra={
                "stage": stage,
                "reason": reason,
                "event_id": task.event.id if task else None,
                "error": error[:500],
            },
        )

    async def decode(self, codec: TopicCodec[M], record: Record, stage: str) -> M | None:
        """Decode a record of our own topics; one that does not decode goes to the DLQ."""
        try:
            return codec.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self.send(
                stage=stage, reason=Reason.MALFORMED, error=f"undecodable message: {exc}",
                origin_topic=record.topic, raw=record.value, key=record.key,
            )  # fmt: skip
            return None
