"""The landed keys of an exactly-once writer: members found across merges, and about 16 bytes
per key (a ``set[str]`` held ~100, and a writer holds every key its table ever got)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import trio

from lakeferry.bus.base import Record
from lakeferry.components import TableState
from lakeferry.stages import keyset
from lakeferry.stages.exactly_once import ExactlyOnce
from lakeferry.stages.keyset import KeySet


def test_members_are_found_before_and_after_merges() -> None:
    keys = KeySet([f"loaded-{i}" for i in range(1000)], merge_at=64)
    for i in range(1000):
        keys.add(f"added-{i}")  # 15 merges of 64, the rest recent
    keys.update(["added-3", "loaded-7"])  # members again: no change
    assert len(keys) == 2000
    assert all(f"loaded-{i}" in keys for i in range(1000))
    assert all(f"added-{i}" in keys for i in range(1000))
    assert not any(f"other-{i}" in keys for i in range(1000))
    assert "added-1000" not in keys
    assert "" not in keys
    assert 3 not in keys


def test_an_empty_set_has_no_members() -> None:
    keys = KeySet()
    assert len(keys) == 0
    assert "a" not in keys
    keys.add("a")
    assert "a" in keys
    assert len(keys) == 1


async def test_a_writer_holds_its_table_keys_in_about_16_bytes_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keyset, "MERGE_AT", 1024)  # merges at this small scale too
    n = 8_000
    landed = {f"event-{i:08d}" for i in range(n)}

    async def read_state(app_ids: object) -> TableState:
        return TableState({}, set(landed))

    once = ExactlyOnce("g", read_state)
    gc.collect()
    tracemalloc.start()
    try:
        await once.load()
        for i in range(n, 2 * n, 500):  # then commits of 500 new keys each
            selection = await once.select(
                [(Record("t", 0, i + k, None, b"", {}, 0), f"event-{i + k:08d}")
                 for k in range(500)]
            )  # fmt: skip
            once.committed(selection)
            del selection
            await trio.lowlevel.checkpoint()
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(once.keys) == 2 * n
    assert f"event-{n + 5:08d}" in once.keys
    assert "event-x" not in once.keys
    assert once.versions == {"g:t:0": 2 * n - 1}
    assert held / (2 * n) < 32, f"{held / (2 * n):.0f} bytes per key"
