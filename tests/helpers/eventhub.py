"""The ``eventhub`` source on the Event Hubs emulator, its checkpoints on Azurite, for tests.

:func:`source_for` builds an :class:`EventHubSource` on an emulator's hub (``tools/
eventhubs_emulator.py``) with both connection strings in the environment, as the settings name
them. Load balancing runs every 0.3 s (10 s by default) and ownership expires after 2 s, so that
instances rebalance within a test.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from lakeferry.api import Duration, PluginContext
from lakeferry_eventhub import EventHubSource, EventHubSourceSettings

FAST = {
    "load_balancing_interval": Duration(0.3),
    "partition_ownership_expiration_interval": Duration(2.0),
}


def source_for(
    emulator: Any,
    azurite: Any,
    container: str,
    monkeypatch: pytest.MonkeyPatch,
    **settings: Any,
) -> EventHubSource:
    """A source on ``emulator``'s hub, checkpointing into ``container`` (created if missing)."""
    monkeypatch.setenv("TEST_EVENTHUB_CONNECTION", emulator.connection_string)
    monkeypatch.setenv("TEST_CHECKPOINT_CONNECTION", azurite.connection_string)
    values = EventHubSourceSettings(
        eventhub_name=emulator.hub_name,
        connection_string_env="TEST_EVENTHUB_CONNECTION",
        checkpoint_connection_string_env="TEST_CHECKPOINT_CONNECTION",
        checkpoint_container=container,
        create_checkpoint_container=True,
        **(FAST | settings),
    )
    context = PluginContext(state_dir=Path("unused"), logger=logging.getLogger("test.eventhub"))
    return EventHubSource(values, context)
