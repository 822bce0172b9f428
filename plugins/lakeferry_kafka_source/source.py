"""The ``kafka`` source: records of external topics become raw events, committed once published.

The loop has three phases, strictly in turn: **poll** a batch (worker thread) → **publish** it
to the intake (trio) → **commit** its offsets (worker thread, synchronous). Nothing is polled
while a batch is being published or committed, so there is never more than one batch in flight
and rebalance callbacks, which librdkafka only runs inside ``poll``, always fall between
batches (or inside the poll that builds one; see :meth:`_Session.poll_batch`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from lakeferry.api import Intake, PluginContext, RawEvent
from lakeferry_kafka_source.settings import KafkaSourceSettings

CLOSE_TIMEOUT = 10.0
"""Longest wait for the consumer to commit what is left and leave its group on shutdown."""
REPORT_INTERVAL = 60.0
"""The same client problem is logged at most once per this many seconds."""

T = TypeVar("T")
Partition = tuple[str, int]


def position(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record (never None for one without error)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError(f"a consumed record without a position: {message!r}")
    return topic, partition, offset


def origin_of(message: Message) -> str:
    return "kafka:{}/{}/{}".format(*position(message))


class _Session:
    """One consumer, from subscribe to close, and what it has published but not committed.

    Every method except :meth:`published` runs in a worker thread, and never two at once (the
    source's ``CapacityLimiter(1)``); :meth:`published` runs on the trio thread between them.
    The rebalance callbacks run inside ``poll``/``close``, hence in the same worker thread.
    """

    def __init__(self, settings: KafkaSourceSettings, logger: logging.Logger) -> None:
        self.settings = settings
        self.log = logger
        self.uncommitted: dict[Partition, int] = {}
        """Next offset to commit per partition: published, commit not yet acknowledged."""
        self._revoked: set[Partition] = set()
        self._fatal: KafkaError | None = None
        self._reported: dict[str, float] = {}
        config: dict[str, Any] = {
            # librdkafka logs every failed reconnect, many per second while a broker is down;
            # error_cb reports problems instead (rate-limited). `"log_level" = 6` in `config`
            # brings the client's own log back to debug a connection.
            "log_level": 2,
            "logger": logger,
            **settings.config,
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": settings.start_from,
            "error_cb": self._on_client_error,
        }
        self.consumer = Consumer(config)
        self.consumer.subscribe(
            list(settings.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- the loop's phases ----------------------------------------------------------------

    def poll_batch(self) -> list[Message]:
        """Up to ``batch_max`` records: wait ``poll_timeout`` for the first, take what is there.

        A revoke served by one of these polls makes the records polled *before* it from the
        revoked partitions someone else's: they are dropped here, uncommitted, and the next
        owner (or this one, if the partition comes back: it then restarts from the committed
        offset) reads them again. Records returned after the callback are current: librdkafka
        discards records fetched for an assignment that is gone.
        """
        batch: list[Message] = []
        timeout: float = self.settings.poll_timeout
        for _ in range(self.settings.batch_max):
            message = self.consumer.poll(timeout)
            timeout = 0
            if self._revoked:
                batch = [m for m in batch if position(m)[:2] not in self._revoked]
                self._revoked.clear()
            if self._fatal is not None:
                raise KafkaException(self._fatal)
            if message is None:
                break
            error = message.error()
            if error is None:
                batch.append(message)
            elif error.fatal():
                raise KafkaException(error)
            else:
                self._report(logging.WARNING, f"consuming {self.settings.topics}: {error.str()}")
        return batch

    def published(self, batch: Sequence[Message]) -> None:
        """The intake accepted ``batch``: its offsets may be committed now (trio thread)."""
        for message in batch:
            topic, partition, offset = position(message)
            self.uncommitted[(topic, partition)] = offset + 1

    def commit(self) -> None:
        """Commit every published offset; what fails stays for the next attempt.

        A failed commit is not an error of the source: the records are on the bus, and a later
        commit of the same partition (or the revoke callback) covers them; at worst they are
        delivered again after a restart or a rebalance, and the daemon deduplicates by event id.
        """
        if self.uncommitted:
            self._commit(dict(self.uncommitted), "will retry")

    def close(self) -> None:
        """Leave the group; the final revoke commits what is still uncommitted."""
        self.consumer.close()

    # -- callbacks (inside poll/close, in the worker thread) ----------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.log.info("kafka source assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was published from these partitions while they are still ours."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked |= revoked
        pending = {p: o for p, o in self.uncommitted.items() if p in revoked}
        if pending:
            self._commit(pending, "redelivered to the next owner")
        for partition in revoked:
            self.uncommitted.pop(partition, None)
        self.log.info("kafka source revoked %s", _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (session timed out): others may own them already, so commit nothing."""
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked |= lost
        dropped = [p for p in lost if self.uncommitted.pop(p, None) is not None]
        self.log.warning(
            "kafka source lost %s (%d with uncommitted offsets: they are delivered again)",
            _names(partitions),
            len(dropped),
        )

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        else:
            self._report(logging.WARNING, f"kafka source client: {error.str()}")

    # -- helpers ------------------------------------------------------------------------------

    def _commit(self, offsets: dict[Partition, int], on_failure: str) -> None:
        request = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            answer = self.consumer.commit(offsets=request, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.fatal():
                raise
            self._report(logging.WARNING, f"committing offsets failed ({on_failure}): {exc}")
            return
        failed = {(tp.topic, tp.partition): tp.error for tp in answer or () if tp.error}
        for key, offset in offsets.items():
            if key not in failed and self.uncommitted.get(key) == offset:
                del self.uncommitted[key]
        for (topic, partition), error in failed.items():
            self._report(
                logging.WARNING, f"committing {topic}/{partition} failed ({on_failure}): {error}"
            )

    def _report(self, level: int, text: str) -> None:
        now = time.monotonic()
        if now - self._reported.get(text, -REPORT_INTERVAL) >= REPORT_INTERVAL:
            self._reported[text] = now
            self.log.log(level, "%s", text)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "nothing"


class KafkaSource:
    """Publishes the records of ``topics`` (values as raw event bytes) and then commits them.

    Each batch of at most ``batch_max`` records goes to ``intake.publish`` with the origins
    ``kafka:<topic>/<partition>/<offset>``, in offset order per partition; only after
    ``publish`` returned (the events are on the bus) are the batch's offsets committed,
    synchronously, as last offset + 1 per partition. A record without a value is published as
    empty bytes, so it is dead-lettered as ``malformed`` rather than dropped.

    Delivery is at-least-once: a crash or a cancellation between publish and commit publishes
    that batch again later (downstream deduplicates by event id). A ``publish`` that blocks for
    longer than librdkafka's ``max.poll.interval.ms`` (5 minutes) makes the consumer leave its
    group: its partitions are delivered again to whoever owns them next.

    Resource handling: one consumer per :meth:`run`, used from one worker thread at a time;
    at most one batch of records in memory. Cancellation waits for the current poll (at most
    ``poll_timeout``); then the consumer commits what is still uncommitted and leaves the group
    in a worker thread, given ``CLOSE_TIMEOUT`` seconds before it is abandoned.

    Error handling: unreachable brokers, missing topics and failed commits are logged (once a
    minute each) while librdkafka keeps retrying; fatal client errors and invalid librdkafka
    settings raise :class:`confluent_kafka.KafkaException`, and so does a failing ``publish``
    (the bus is down): the daemon restarts the source with backoff.
    """

    def __init__(self, settings: KafkaSourceSettings, context: PluginContext) -> None:
        self.name = f"kafka:{','.join(settings.topics)}"
        self._settings = settings
        self._logger = context.logger

    async def run(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume, publish and commit forever; ready once subscribed."""
        settings = self._settings
        limiter = trio.CapacityLimiter(1)  # one thread at a time touches the consumer

        async def in_thread(function: Callable[[], T], *, abandon: bool = False) -> T:
            return await trio.to_thread.run_sync(
                function, limiter=limiter, abandon_on_cancel=abandon
            )

        session = await in_thread(lambda: _Session(settings, self._logger))
        try:
            self._logger.info(
                "kafka source consuming %s from %s as group %s",
                ", ".join(settings.topics),
                settings.bootstrap_servers,
                settings.group_id,
            )
            task_status.started()
            while True:
                batch = await in_thread(session.poll_batch)  # returns within poll_timeout
                if batch:
                    # Not ours to catch: a failing publish means the bus is down.
                    await intake.publish([RawEvent(m.value() or b"", origin_of(m)) for m in batch])
                    session.published(batch)
                if session.uncommitted:
                    # Abandoned on cancel: a commit can wait on an unreachable coordinator.
                    # The batch is published either way; close() waits for that thread.
                    await in_thread(session.commit, abandon=True)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as closing:
                await in_thread(session.close, abandon=True)
            if closing.cancelled_caught:
                self._logger.warning(
                    "kafka source: consumer did not close within %gs; abandoned", CLOSE_TIMEOUT
                )
