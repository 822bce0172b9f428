"""lakeferry built-in plugin ``onelake``: a sink for Microsoft OneLake and any ADLS Gen2 account.

- sink kind ``onelake`` (:class:`~lakeferry_onelake.sink.OneLakeSink`), sync SDK clients in
  worker threads: ``api = "blob"`` (the default) lands a file with one Put Blob, or Put Block per
  chunk + Put Block List, through the Blob endpoint (``azure-storage-blob``), each atomic with no
  temporary path; ``api = "dfs"`` creates a temporary file through the DFS API
  (``azure-storage-file-datalake``), appends in chunks, flushes and renames it into place. Both
  skip a target that already holds the same size and sha256 (kept as metadata
  ``lakeferry_sha256``).

OneLake: ``account_url = "https://onelake.dfs.fabric.microsoft.com"``, ``filesystem`` = the
workspace (name or GUID), ``base_path = "<lakehouse>.Lakehouse/Files/<folder>"`` (or
``<lakehouse-guid>/Files/<folder>``). ADLS Gen2: ``account_url =
"https://<account>.dfs.core.windows.net"``, ``filesystem`` = the container.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeferry.api import RegisterSink, hookimpl, lazy_exports, lazy_factory
from lakeferry_onelake.settings import OneLakeSinkSettings

if TYPE_CHECKING:
    from lakeferry_onelake.sink import OneLakeSink

__all__ = ["OneLakeSink", "OneLakeSinkSettings"]


# Imported on first use, not with the plugin: the Azure SDK costs ~35 MiB.
__getattr__ = lazy_exports(__name__, {"OneLakeSink": "sink"})


@hookimpl
def lakeferry_register_sinks(register: RegisterSink) -> None:
    register("onelake", lazy_factory("lakeferry_onelake.sink:OneLakeSink"), OneLakeSinkSettings)
