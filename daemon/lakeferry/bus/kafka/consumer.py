"""The Kafka bus's consumer: one OS thread owns each librdkafka consumer."""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import confluent_kafka
import trio
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KTopicPartition

from lakeferry.bus.base import (
    AssignCallback,
    Record,
    RevokeCallback,
    TopicPartition,
)
from lakeferry.bus.buffers import PartitionBuffers
from lakeferry.bus.kafka.common import (
    BUFFER_HIGH,
    BUFFER_LOW,
    CONSUME_BATCH,
    POLL_TIMEOUT,
    _record,
    _tp,
    log,
)
from lakeferry.errors import BusError

if TYPE_CHECKING:
    from lakeferry.bus.kafka.client import KafkaBus


_Command = Callable[[confluent_kafka.Consumer], None]


class KafkaConsumer:
    """A group member; one OS thread owns the librdkafka consumer (see the module docstring)."""

    def __init__(
        self,
        bus: KafkaBus,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: AssignCallback | None,
        on_revoke: RevokeCallback | None,
    ) -> None:
        self.group = group
        self._bus = bus
        self._topics = list(dict.fromkeys(topics))
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._token = bus._token
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._buffers = PartitionBuffers()
        self._paused: frozenset[TopicPartition] = frozenset()
        self._generation: dict[TopicPartition, int] = {}
        self._last_popped: dict[TopicPartition, Record] = {}
        self._gen_counter = itertools.count(1)
        self._wakeup = trio.Event()
        self._closed = False
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._t_broker_paused: set[TopicPartition] = set()  # only the thread touches these
        self._t_fresh: set[TopicPartition] = set()
        self._t_fatal: KafkaError | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name=f"lakeferry-kafka-{group}", daemon=True
        )
        self._thread.start()

    # -- the consumer thread -----------------------------------------------------------------

    def _thread_main(self) -> None:
        config = self._bus._consumer_config(self.group)
        bus_errors: Callable[[KafkaError], None] = config["error_cb"]

        def on_error(err: KafkaError) -> None:  # served by poll(), on this thread
            if err.fatal():
                self._t_fatal = err
            bus_errors(err)

        consumer: confluent_kafka.Consumer | None = None
        try:
            consumer = confluent_kafka.Consumer({**config, "error_cb": on_error})
            consumer.subscribe(
                self._topics,
                on_assign=self._t_assign,
                on_revoke=self._t_revoke,
                on_lost=self._t_lost,
            )
            self._t_loop(consumer)
        except BaseException as exc:  # surfaced to trio by next()
            self._failure = exc
            self._bus._from_thread(self._wake)
            if self._t_fatal is None:
                return
        if consumer is None:
            return
        try:
            consumer.close()
        except KafkaException as exc:
            log.warning("closing a consumer failed", extra={"group": self.group, "error": str(exc)})

    def _t_loop(self, consumer: confluent_kafka.Consumer) -> None:
        held_back = False
        t_held: set[TopicPartition] = set()
        broker_paused = self._t_broker_paused
        while not self._stop.is_set():
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                command(consumer)
            if self._t_fatal is not None:
                # Fenced by a newer member under this member's name, say: librdkafka will not
                # use this client again. The stage fails, and its restart joins anew.
                raise KafkaException(self._t_fatal)
            # Pause fetching only while the buffers are full. A partition the stage paused (a
            # retry rung waiting for its head's due time) keeps its records in the trio-side
            # buffer instead: resuming it is then instant, not one broker fetch round later.
            # Its records cannot be taken, so they do not count as full buffers (a rung
            # holding a thousand parked tasks stopped the fetching of every other partition
            # until it came due: the quick mixed-origins run on Kafka, 5 minutes); once it
            # holds BUFFER_LOW of them, that partition alone stops being fetched.
            stage_paused = self._paused
            held = {tp for tp in stage_paused if self._buffers.size(tp) >= BUFFER_LOW}
            flowing = self._buffers.count - sum(self._buffers.size(tp) for tp in stage_paused)
            was_held_back = held_back
            if held_back and flowing <= BUFFER_LOW:
                held_back = False
            elif not held_back and flowing >= BUFFER_HIGH:
                held_back = True
            # Only a change of state or a fresh assignment can change what must be paused (a
            # revoked partition needs nothing), so most rounds skip straight to the poll.
            if held_back != was_held_back or self._t_fresh or held != t_held:
                t_held = held
                assigned = {_tp(tp) for tp in consumer.assignment()}
                wanted = set(assigned) if held_back else held & assigned
                fresh = self._t_fresh & assigned
                self._t_fresh.clear()
                to_pause = (wanted - broker_paused) | (wanted & fresh)
                to_resume = ((broker_paused - wanted) | (fresh - wanted)) & assigned
                if to_pause:
                    consumer.pause([KTopicPartition(t, p) for t, p in to_pause])
                if to_resume:
                    consumer.resume([KTopicPartition(t, p) for t, p in to_resume])
                broker_paused.clear()
                broker_paused.update(wanted)
            generations = dict(self._generation)
            # poll() returns as soon as one record is there; consume(n, timeout) would wait for n
            # records or the whole timeout, adding its timeout to every hop's latency.
            first = consumer.poll(POLL_TIMEOUT)
            if first is None:
                continue
            msgs = [first, *consumer.consume(CONSUME_BATCH - 1, 0)]
            records = []
            for msg in msgs:
                error = msg.error()
                if error is not None:
                    # This client is finished: let the stage start anew. (poll() reports it as
                    # _FATAL, an error whose own fatal() is False.)
                    if error.fatal() or error.code() == KafkaError._FATAL:
                        raise KafkaException(error)
                    log.debug("consume error", extra={"error": error.str()})
                    continue
                records.append(_record(msg))
            if records:
                self._bus._set_health(True, "consumed")
                self._bus._from_thread(functools.partial(self._deliver, records, generations))

    def _t_assign(
        self, consumer: confluent_kafka.Consumer, partitions: list[KTopicPartition]
    ) -> None:
        tps = [_tp(tp) for tp in partitions]
        # librdkafka may keep a partition's pause across a revoke and a new assignment (found
        # by the chaos run: a partition paused for backpressure, revoked and assigned again was
        # never fetched), so the loop pauses or resumes every freshly assigned one explicitly.
        self._t_fresh.update(tps)  # pause state unknown: the loop sets it explicitly
        self._call_trio(self._assigned, tps)

    def _t_revoke(
        self, consumer: confluent_kafka.Consumer, partitions: list[KTopicPartition]
    ) -> None:
        tps = [_tp(tp) for tp in partitions]
        offsets = self._call_trio(self._revoked, tps)
        if offsets:
            try:
                consumer.commit(
                    offsets=[KTopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                log.warning(
                    "commit on revoke failed", extra={"group": self.group, "error": str(exc)}
                )

    def _t_lost(
        self, consumer: confluent_kafka.Consumer, partitions: list[KTopicPartition]
    ) -> None:
        # Lost, not revoked: another member may already own them; commit nothing.
        self._call_trio(self._revoked, [_tp(tp) for tp in partitions], True)

    def _call_trio(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            return None

    # -- trio side ---------------------------------------------------------------------------

    def _wake(self) -> None:
        self._wakeup.set()

    def _assigned(self, tps: list[TopicPartition]) -> None:
        self._buffers.add(tps)
        if self._on_assign is not None:
            self._on_assign(tps)
        self._wake()

    def _revoked(
        self, tps: list[TopicPartition], lost: bool = False
    ) -> Mapping[TopicPartition, int] | None:
        for tp in tps:
            self._last_popped.pop(tp, None)
            self._buffers.remove(tp)
        offsets = self._on_revoke(tps) if self._on_revoke is not None else None
        return None if lost else offsets

    def _deliver(self, records: list[Record], generations: dict[TopicPartition, int]) -> None:
        by_tp: dict[TopicPartition, list[Record]] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            run = by_tp.get(tp)
            if run is None:
                by_tp[tp] = [record]
            else:
                run.append(record)
        for tp, run in by_tp.items():
            if tp not in self._buffers or generations.get(tp, 0) != self._generation.get(tp, 0):
                continue  # revoked, or sought since this poll began (it is fetched again)
            self._buffers.extend(tp, run)
        self._wake()

    def _pop(self) -> Record | None:
        record = self._buffers.pop(self._paused)
        if record is not None:
            self._last_popped[record.tp] = record
        return record

    async def next(self) -> Record:
        while True:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the consumer is closed")
            if self._failure is not None:
                raise BusError(f"kafka consumer {self.group} failed: {self._failure!r}")
            record = self._pop()
            if record is not None:
                return record
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
                continue
            await self._wakeup.wait()

    def pause(self, tp: TopicPartition) -> None:
        self._paused = self._paused | {tp}

    def resume(self, tp: TopicPartition) -> None:
        self._paused = self._paused - {tp}
        self._wake()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        if tp not in self._buffers:
            raise ValueError(f"{tp} is not assigned to this consumer")
        last = self._last_popped.get(tp)
        if last is not None and last.offset == offset:
            # Putting back the record just taken (a retry rung's head that is not due yet):
            # the buffer already holds what follows it, so no refetch from the broker.
            self._buffers.put_back(last)
            del self._last_popped[tp]
            return
        self._generation[tp] = next(self._gen_counter)
        self._buffers.clear(tp)
        target = KTopicPartition(tp.topic, tp.partition, offset)

        def command(consumer: confluent_kafka.Consumer) -> None:
            try:
                consumer.seek(target)
            except KafkaException as exc:
                # Only when the partition was revoked meanwhile: its new owner reads it.
                log.warning("seek failed", extra={"partition": str(tp), "error": str(exc)})

        self._commands.put(command)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        if any(offset < 0 for offset in offsets.values()):
            raise ValueError("offsets must not be negative")
        if not offsets:
            await trio.lowlevel.checkpoint()
            return
        items = [KTopicPartition(t, p, o) for (t, p), o in offsets.items()]
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def command(consumer: confluent_kafka.Consumer) -> None:
            try:
                consumer.commit(offsets=items, asynchronous=False)
                outcome.append(None)
            except KafkaException as exc:
                outcome.append(exc)
            self._bus._from_thread(done.set)

        self._commands.put(command)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._bus.operation_timeout + 5) as scope:
                await done.wait()
        if scope.cancelled_caught:
            raise BusError(f"commit for {self.group} timed out")
        if outcome and outcome[0] is not None:
            raise BusError(f"commit for {self.group} failed: {outcome[0]}")

    def assignment(self) -> frozenset[TopicPartition]:
        return self._buffers.assigned()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._bus._consumers.discard(self)
        self._wake()
        revoked = list(self._buffers.order)
        final = self._on_revoke(revoked) if (self._on_revoke and revoked) else None
        if final:
            with trio.CancelScope(shield=True), trio.move_on_after(self._bus.operation_timeout):
                done = trio.Event()
                items = [KTopicPartition(t, p, o) for (t, p), o in final.items()]

                def command(consumer: confluent_kafka.Consumer) -> None:
                    try:
                        consumer.commit(offsets=items, asynchronous=False)
                    except KafkaException as exc:
                        log.warning("final commit failed", extra={"error": str(exc)})
                    self._bus._from_thread(done.set)

                self._commands.put(command)
                await done.wait()
        self._on_revoke = None  # the close below revokes again: nothing left to hand back
        self._buffers.clear()
        self._stop.set()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join, self._bus.operation_timeout + 5)
