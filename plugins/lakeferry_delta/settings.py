"""The ``[inventory]`` settings of the ``delta`` kind."""

from __future__ import annotations

import msgspec


class DeltaSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the two Delta tables live.

    ``inventory_uri`` and ``events_uri`` are anything deltalake accepts: a local path
    (used as given, so prefer absolute paths) or a URI such as
    ``abfss://<workspace>@onelake.dfs.fabric.microsoft.com/<lakehouse>/Tables/inventory``.
    ``storage_options`` go to deltalake unchanged for both tables (credentials, endpoints;
    never logged).

    ``partition_by_date`` only matters when a table is *created*: it adds a ``committed_date``
    (inventory) or ``received_date`` (events) column, the UTC date of the row, and partitions
    by it. An existing table keeps the layout it was created with.
    """

    inventory_uri: str
    events_uri: str
    storage_options: dict[str, str] = {}
    partition_by_date: bool = False
