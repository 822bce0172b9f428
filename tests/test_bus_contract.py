"""The bus contract (:mod:`bus_contract`) run on the embedded bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bus_contract import BusContract, BusFactory

from lakeferry.bus.base import Bus
from lakeferry.bus.embedded import EmbeddedBus


class TestEmbeddedBus(BusContract):
    @pytest.fixture
    async def bus_factory(self, tmp_path: Path) -> AsyncIterator[BusFactory]:
        opened: list[EmbeddedBus] = []

        async def factory() -> Bus:
            bus = await EmbeddedBus.open(tmp_path / "bus.db", poll_interval=0.02)
            opened.append(bus)
            return bus

        yield factory
        for bus in opened:
            await bus.aclose()
