"""The Kafka bus's producer: one per process, a thread for delivery reports.

Deliveries are handed to trio in batches: a delivery report only notes its outcome (on the
poll thread, inside ``poll()``), and once ``poll()`` returns, everything it served crosses into
trio in *one* ``run_sync_soon`` call. One produce request acknowledges many records at once
(``linger.ms``), so this is one thread hop per acknowledged request instead of one per record;
and a :meth:`KafkaProducer.send_many` call waits on one event for all of its records.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import confluent_kafka
import trio
from confluent_kafka import KafkaError

from lakeferry.bus.base import (
    OutgoingRecord,
)
from lakeferry.bus.kafka.common import log
from lakeferry.errors import BusError

if TYPE_CHECKING:
    from lakeferry.bus.kafka.client import KafkaBus

POLL_INTERVAL = 0.05
"""How long the poll thread waits for delivery reports before looking at its stop flag."""


class _Pending:
    """The records of one :meth:`KafkaProducer.send_many` call that are not acknowledged yet.
    Touched only on the trio thread."""

    __slots__ = ("done", "errors", "left")

    def __init__(self, count: int) -> None:
        self.done = trio.Event()
        self.left = count
        self.errors: list[str] = []


class KafkaProducer:
    """The process's producer: ``acks=all``, idempotent, deliveries awaited in trio."""

    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus
        conf = {
            **bus._client,
            "acks": "all",
            "enable.idempotence": True,
            # Concurrent sends share a request: 10 ms took a third off the broker's and this
            # process's CPU per message against 2 ms (docs/benchmarks.md); four hops add <= 40 ms.
            "linger.ms": 10,
            "error_cb": bus._error_cb,
            **bus._producer_conf,
        }
        self._producer = confluent_kafka.Producer(conf)
        # Delivery reports not yet handed to trio: appended by whichever thread serves them
        # (the poll thread; ``flush()`` at close), taken by the poll thread only.
        self._reports: collections.deque[tuple[_Pending, KafkaError | None]] = collections.deque()
        self.handoffs = 0
        """How many times delivery reports crossed into trio (for tests and curiosity)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._poll_loop, name="lakeferry-kafka-producer", daemon=True
        )
        self._thread.start()

    # -- the poll thread ---------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(POLL_INTERVAL)
            self._hand_over()
        self._hand_over()  # what flush() served at close

    def _delivered(self, pending: _Pending, err: KafkaError | None, _msg: Any) -> None:
        """Delivery report of one record, inside ``poll()`` or ``flush()``: only noted here."""
        self._reports.append((pending, err))

    def _hand_over(self) -> None:
        """Everything served since the last call, to trio in one hop."""
        reports = self._reports
        if not reports:
            return
        batch = []
        while reports:  # popleft is atomic; a report appended meanwhile goes next time
            batch.append(reports.popleft())
        if any(err is None for _, err in batch):
            self._bus._set_health(True, "delivered")
        self.handoffs += 1
        self._bus._from_thread(functools.partial(_resolve, batch))

    # -- trio side ---------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        await self.send_many([OutgoingRecord(topic, value, key, headers or {})])

    async def send_many(self, records: Sequence[OutgoingRecord]) -> None:
        if not records:
            await trio.lowlevel.checkpoint()
            return
        pending = _Pending(len(records))
        on_delivery = functools.partial(self._delivered, pending)
        produce = self._producer.produce
        for record in records:
            while True:
                try:
                    produce(
                        record.topic,
                        record.value,
                        record.key,
                        headers=list(record.headers.items()) or None,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    await trio.sleep(0.01)  # librdkafka's queue is full: let it drain
        await pending.done.wait()
        if pending.errors:
            raise BusError(
                f"{len(pending.errors)} of {len(records)} record(s) not delivered: "
                f"{pending.errors[0]}"
            )

    async def aclose(self) -> None:
        timeout = self._bus.operation_timeout
        left = await trio.to_thread.run_sync(self._producer.flush, timeout)
        if left:
            log.error("records not delivered at close", extra={"count": left})
        self._stop.set()
        await trio.to_thread.run_sync(self._thread.join, 2.0)


def _resolve(reports: list[tuple[_Pending, KafkaError | None]]) -> None:
    """On the trio thread: count the reports against their :class:`_Pending`."""
    for pending, err in reports:
        if err is not None:
            pending.errors.append(err.str())
        pending.left -= 1
        if pending.left == 0:
            pending.done.set()
