"""Bus records into a Delta table exactly once: by offset and by key (kafka-delta-ingest's way).

Used by the results stage (the inventory: one row per event id) and the events recorder (the
events table: one row per intake record). Each commit carries, with its rows, one application
transaction per bus partition (``app_id`` = ``<group>:<topic>:<partition>``, ``version`` = the
highest offset written); records at or below a partition's stored version are in the table
already. One thing can reach a partition twice at two offsets (a source's redelivery, an intake
record published twice after a crash), so rows are also skipped by *key* (event id, origin)
when the key is in the table.

The stored versions and the keys in the table are always read together, from one snapshot
(``read_state``): at start, when partitions are assigned, when a partition is first seen and
after a failed commit. The table's commit-time check (the stored version must still be the one
read) then proves nobody wrote this partition since the keys were read. (Read apart, another
writer's commit between the two reads let a second row for one event id through.)

The keys are held as a :class:`lakeferry.stages.keyset.KeySet` (16 bytes per key instead of a
``set[str]``'s ~100), since a writer holds every key its table ever got.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from lakeferry.bus.base import Record, TopicPartition
from lakeferry.components import TableState
from lakeferry.stages.keyset import KeySet


def app_id(group: str, tp: TopicPartition) -> str:
    return f"{group}:{tp.topic}:{tp.partition}"


class Selection(NamedTuple):
    """What a batch may write: the positions of its items to write, the transactions to commit
    with them, and how many items were skipped as written by offset or by key."""

    keep: list[int]
    transactions: dict[str, int]
    keys: set[str]
    by_offset: int
    by_key: int


class ExactlyOnce:
    """The bookkeeping of one stage's writer (see the module docstring)."""

    def __init__(
        self, group: str, read_state: Callable[[Sequence[str]], Awaitable[TableState]]
    ) -> None:
        self.group = group
        self._read = read_state
        self.versions: dict[str, int] = {}
        self.keys = KeySet()
        self._stale = False

    def on_assign(self, tps: Sequence[TopicPartition]) -> None:
        # Another member may have written these partitions since we read the state.
        self._stale = True

    def on_revoke(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self.versions.pop(app_id(self.group, tp), None)

    def failed(self) -> None:
        """A commit failed (maybe it went through after all, or another writer's did):
        re-read the state before the next batch."""
        self._stale = True

    async def load(self, more: Sequence[str] = ()) -> None:
        """Versions of every known application id (and ``more``) and the keys in the table,
        from one snapshot; never one without the other."""
        wanted = sorted(self.versions.keys() | set(more))
        state = await self._read(wanted)
        self.versions = {a: state.versions.get(a, -1) for a in wanted}
        self.keys = KeySet(state.keys)
        self._stale = False

    def written(self, record: Record) -> bool:
        """Whether ``record`` is at or below its partition's known stored version (a
        redelivery after a restart or a rebalance): skip it without waiting for a batch."""
        known = self.versions.get(app_id(self.group, record.tp))
        return known is not None and record.offset <= known

    async def select(self, items: Sequence[tuple[Record, str | None]]) -> Selection:
        """Of ``(record, key)`` items in bus order, the ones to write (key None: nothing to
        write, but the offset still counts as done)."""
        unknown = {app_id(self.group, r.tp) for r, _ in items} - self.versions.keys()
        if unknown or self._stale:
            await self.load(sorted(unknown))
        keep: list[int] = []
        txns: dict[str, int] = {}
        keys: set[str] = set()
        by_offset = by_key = 0
        for i, (record, key) in enumerate(items):
            aid = app_id(self.group, record.tp)
            if record.offset <= self.versions[aid]:
                by_offset += 1
                continue
            txns[aid] = max(txns.get(aid, -1), record.offset)
            if key is None:
                continue
            if key in self.keys or key in keys:
                by_key += 1
                continue
            keys.add(key)
            keep.append(i)
        return Selection(keep, txns, keys, by_offset, by_key)

    def committed(self, selection: Selection) -> None:
        self.versions.update(selection.transactions)
        self.keys.update(selection.keys)
