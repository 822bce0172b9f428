"""The ``[[sources]]`` settings of the ``spool`` kind."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from lakeferry.api import Duration, LocalPath


class SpoolSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A folder of JSONL files, one event per line.

    Writers must write a file elsewhere (or under a dotfile or ``*.tmp`` name, which are ignored)
    and rename it into ``path`` when it is complete: a file is read as soon as it is seen.
    """

    path: LocalPath
    """The folder watched (created when missing). Only its top level is scanned."""
    pattern: str = "*.jsonl"
    """Which file names are events (``fnmatch``, case-sensitive)."""
    poll_interval: Duration = Duration(1.0)
    """How long to wait between scans when the last scan found nothing to do."""
    batch_lines: Annotated[int, Meta(ge=1)] = 500
    """Events handed to the intake per ``publish`` call (and per progress checkpoint)."""
    done_dir: LocalPath = ""
    """Where finished files are moved; empty: ``<path>/done``. Best on the same filesystem."""
