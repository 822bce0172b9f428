"""The Kafka bus's producer: one per process, a thread for delivery reports."""

from __future__ import annotations

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


class _Waiter:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: str | None = None

    def resolve(self, error: str | None) -> None:
        self.error = error
        self.done.set()


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
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._poll_loop, name="lakeferry-kafka-producer", daemon=True
        )
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _delivered(self, waiter: _Waiter, err: KafkaError | None, _msg: Any) -> None:
        """Delivery report, on the poll thread."""
        error = None if err is None else err.str()
        if err is None:
            self._bus._set_health(True, "delivered")
        self._bus._from_thread(lambda: waiter.resolve(error))

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
        waiters: list[_Waiter] = []
        for record in records:
            waiter = _Waiter()
            while True:
                try:
                    self._producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        headers=list(record.headers.items()) or None,
                        on_delivery=functools.partial(self._delivered, waiter),
                    )
                    break
                except BufferError:
                    await trio.sleep(0.01)  # librdkafka's queue is full: let it drain
            waiters.append(waiter)
        await trio.lowlevel.checkpoint()
        for waiter in waiters:
            await waiter.done.wait()
        failed = [w.error for w in waiters if w.error is not None]
        if failed:
            raise BusError(f"{len(failed)} of {len(waiters)} record(s) not delivered: {failed[0]}")

    async def aclose(self) -> None:
        timeout = self._bus.operation_timeout
        left = await trio.to_thread.run_sync(self._producer.flush, timeout)
        if left:
            log.error("records not delivered at close", extra={"count": left})
        self._stop.set()
        await trio.to_thread.run_sync(self._thread.join, 2.0)
