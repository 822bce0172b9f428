"""What both buses' consumers hold between a fetch and :meth:`Consumer.next`: one buffer per
assigned partition, handed out one partition after another (round robin), so that a busy
partition does not starve the others and a paused one is skipped, not drained."""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable

from lakeferry.bus.base import Record, TopicPartition


class PartitionBuffers:
    def __init__(self) -> None:
        self.order: list[TopicPartition] = []
        """The assigned partitions, in the order they are served."""
        self._buffers: dict[TopicPartition, deque[Record]] = {}
        self._next = 0
        self.count = 0
        """Records buffered over every partition."""

    def __contains__(self, tp: object) -> bool:
        return tp in self._buffers

    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(self._buffers)

    def add(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            if tp not in self._buffers:
                self._buffers[tp] = deque()
                self.order.append(tp)

    def remove(self, tp: TopicPartition) -> None:
        buffer = self._buffers.pop(tp, None)
        if buffer:
            self.count -= len(buffer)
        if tp in self.order:
            self.order.remove(tp)

    def is_empty(self, tp: TopicPartition) -> bool:
        return not self._buffers[tp]

    def size(self, tp: TopicPartition) -> int:
        """Records buffered for ``tp`` (0 when it is not assigned)."""
        buffer = self._buffers.get(tp)
        return len(buffer) if buffer is not None else 0

    def extend(self, tp: TopicPartition, records: Iterable[Record]) -> None:
        """Fetched records of an assigned partition, in offset order."""
        buffer = self._buffers[tp]
        before = len(buffer)
        buffer.extend(records)
        self.count += len(buffer) - before

    def put_back(self, record: Record) -> None:
        """``record``, just popped, goes back to the head of its partition."""
        self._buffers[record.tp].appendleft(record)
        self.count += 1

    def clear(self, tp: TopicPartition | None = None) -> None:
        """Drop what is buffered for ``tp`` (a seek), or for every partition."""
        for buffer in [self._buffers[tp]] if tp is not None else self._buffers.values():
            self.count -= len(buffer)
            buffer.clear()

    def pop(self, paused: Container[TopicPartition]) -> Record | None:
        """The next record of the next partition that has one and is not paused."""
        count = len(self.order)
        for i in range(count):
            tp = self.order[(self._next + i) % count]
            buffer = self._buffers[tp]
            if buffer and tp not in paused:
                self._next = (self._next + i + 1) % count
                self.count -= 1
                return buffer.popleft()
        return None
