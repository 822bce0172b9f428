"""lakeferry built-in plugin ``onelake``: a sink for Microsoft OneLake and any ADLS Gen2 account.

- sink kind ``onelake`` (:class:`~lakeferry_onelake.sink.OneLakeSink`): lands files through the
  DFS API (``azure-storage-file-datalake``, sync client in worker threads): a temporary file,
  appended in chunks, flushed and renamed into place; skips a target that already holds the
  same size and sha256 (kept as metadata ``lakeferry_sha256``).

OneLake: ``account_url = "https://onelake.dfs.fabric.microsoft.com"``, ``filesystem`` = the
workspace (name or GUID), ``base_path = "<lakehouse>.Lakehouse/Files/<folder>"`` (or
``<lakehouse-guid>/Files/<folder>``). ADLS Gen2: ``account_url =
"https://<account>.dfs.core.windows.net"``, ``filesystem`` = the container.
"""

from __future__ import annotations

from collections.abc import Callable

from lakeferry.api import hookimpl
from lakeferry_onelake.settings import OneLakeSinkSettings
from lakeferry_onelake.sink import OneLakeSink

__all__ = ["OneLakeSink", "OneLakeSinkSettings"]


@hookimpl
def lakeferry_register_sinks(register: Callable[..., None]) -> None:
    register("onelake", OneLakeSink, OneLakeSinkSettings)
