"""lakeferry built-in plugin ``delta``: the inventory and events tables in Delta Lake.

Registers the inventory kind ``delta`` (settings :class:`DeltaSettings`, ``[inventory]``) and
the source kind ``delta`` (settings :class:`DeltaSourceSettings`, a ``[[sources]]`` entry: a
Delta table whose rows are events, :mod:`lakeferry_delta.source`).
Works on a local path, on ADLS Gen2 and OneLake (``abfss://``, credentials in
:mod:`lakeferry_delta.credentials`), on Azurite in emulator mode, or on any URI deltalake
accepts given ``storage_options``. ``maintain()`` compacts, checkpoints and vacuums the tables on
a schedule (:mod:`lakeferry_delta.maintenance`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeferry.api import (
    RegisterInventory,
    RegisterSource,
    hookimpl,
    lazy_exports,
    lazy_factory,
)
from lakeferry_delta.allocator import configure
from lakeferry_delta.settings import DeltaSettings
from lakeferry_delta.source_settings import DeltaSourceSettings

# Before any module of this package imports deltalake (lakeferry_delta.allocator says why).
configure()

if TYPE_CHECKING:
    from lakeferry_delta.inventory import DeltaInventory
    from lakeferry_delta.source import DeltaSource
    from lakeferry_delta.table import REASON_CONFLICT, ConflictingTransactions

__all__ = [
    "REASON_CONFLICT",
    "ConflictingTransactions",
    "DeltaInventory",
    "DeltaSettings",
    "DeltaSource",
    "DeltaSourceSettings",
    "lakeferry_register_inventories",
    "lakeferry_register_sources",
]

# Imported on first use, not with the plugin: deltalake and pyarrow cost ~46 MiB.
__getattr__ = lazy_exports(
    __name__,
    {
        "DeltaInventory": "inventory",
        "DeltaSource": "source",
        "ConflictingTransactions": "table",
        "REASON_CONFLICT": "table",
    },
)


@hookimpl
def lakeferry_register_inventories(register: RegisterInventory) -> None:
    register("delta", lazy_factory("lakeferry_delta.inventory:DeltaInventory"), DeltaSettings)


@hookimpl
def lakeferry_register_sources(register: RegisterSource) -> None:
    register("delta", lazy_factory("lakeferry_delta.source:DeltaSource"), DeltaSourceSettings)
