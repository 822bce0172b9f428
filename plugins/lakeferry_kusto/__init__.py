"""lakeferry built-in plugin ``kusto``: rows of an Azure Data Explorer (Kusto) query as events.

Registers the source kind ``kusto`` (settings :class:`KustoSourceSettings`, a ``[[sources]]``
entry): a KQL query read in pages ordered by a cursor column, resumable from its committed
cursor, once (a backfill between ``start`` and ``stop``) or following the table like the
polling pipeline it replaces (:mod:`lakeferry_kusto.source`). azure-kusto-data is the client;
credentials come from azure-identity (``credential = "default"``) or a service principal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeferry.api import RegisterSource, hookimpl, lazy_exports, lazy_factory
from lakeferry_kusto.settings import KustoSourceSettings

if TYPE_CHECKING:
    from lakeferry_kusto.source import KustoSource

__all__ = ["KustoSource", "KustoSourceSettings", "lakeferry_register_sources"]

# Imported on first use: a daemon without a kusto source never loads azure-kusto-data.
__getattr__ = lazy_exports(__name__, {"KustoSource": "source"})


@hookimpl
def lakeferry_register_sources(register: RegisterSource) -> None:
    register("kusto", lazy_factory("lakeferry_kusto.source:KustoSource"), KustoSourceSettings)
