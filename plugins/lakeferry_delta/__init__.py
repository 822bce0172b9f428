"""lakeferry built-in plugin ``delta``: the inventory and events tables in Delta Lake.

Registers the inventory kind ``delta`` (settings :class:`DeltaSettings`, ``[inventory]``).
Works on a local path, on ADLS Gen2 and OneLake (``abfss://``, credentials in
:mod:`lakeferry_delta.credentials`), on Azurite in emulator mode, or on any URI deltalake
accepts given ``storage_options``. ``maintain()`` compacts, checkpoints and vacuums the tables on
a schedule (:mod:`lakeferry_delta.maintenance`).
"""

from __future__ import annotations

from collections.abc import Callable

from lakeferry.api import PluginContext, hookimpl
from lakeferry_delta.inventory import DeltaInventory
from lakeferry_delta.settings import DeltaSettings
from lakeferry_delta.table import REASON_CONFLICT, ConflictingTransactions

__all__ = [
    "REASON_CONFLICT",
    "ConflictingTransactions",
    "DeltaInventory",
    "DeltaSettings",
    "lakeferry_register_inventories",
]


def _build(settings: DeltaSettings, context: PluginContext) -> DeltaInventory:
    return DeltaInventory(settings, context)


@hookimpl
def lakeferry_register_inventories(register: Callable[..., None]) -> None:
    register("delta", _build, DeltaSettings)
