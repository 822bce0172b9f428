"""lakeferry built-in plugin ``spool``: a folder of JSONL files as an event source.

Registers the source kind ``spool`` (settings :class:`SpoolSettings`, a ``[[sources]]`` entry).
Drop complete files into the folder by renaming them in; each non-blank line is one raw event.
"""

from __future__ import annotations

from lakeferry.api import RegisterSource, hookimpl
from lakeferry_spool.settings import SpoolSettings
from lakeferry_spool.source import SpoolSource

__all__ = ["SpoolSettings", "SpoolSource", "lakeferry_register_sources"]


@hookimpl
def lakeferry_register_sources(register: RegisterSource) -> None:
    register("spool", SpoolSource, SpoolSettings)
