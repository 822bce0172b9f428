"""lakeferry built-in plugin ``delta``: the inventory and events tables in Delta Lake.

Registers the inventory kind ``delta`` (settings :class:`DeltaSettings`, ``[inventory]``).
Works on a local path, on ADLS Gen2 and OneLake (``abfss://``, credentials in
:mod:`lakeferry_delta.credentials`), on Azurite in emulator mode, or on any URI deltalake
accepts given ``storage_options``. ``maintain()`` compacts, checkpoints and vacuums the tables on
a schedule (:mod:`lakeferry_delta.maintenance`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeferry.api import RegisterInventory, hookimpl, lazy_exports, lazy_factory
from lakeferry_delta.allocator import configure
from lakeferry_delta.settings import DeltaSettings

# Before any module of this package imports deltalake (lakeferry_delta.allocator says why).
configure()

if TYPE_CHECKING:
    from lakeferry_delta.inventory import DeltaInventory
    from lakeferry_delta.table import REASON_CONFLICT, ConflictingTransactions

__all__ = [
    "REASON_CONFLICT",
    "ConflictingTransactions",
    "DeltaInventory",
    "DeltaSettings",
    "lakeferry_register_inventories",
]

# Imported on first use, not with the plugin: deltalake and pyarrow cost ~46 MiB.
__getattr__ = lazy_exports(
    __name__,
    {
        "DeltaInventory": "inventory",
        "ConflictingTransactions": "table",
        "REASON_CONFLICT": "table",
    },
)


@hookimpl
def lakeferry_register_inventories(register: RegisterInventory) -> None:
    register("delta", lazy_factory("lakeferry_delta.inventory:DeltaInventory"), DeltaSettings)
