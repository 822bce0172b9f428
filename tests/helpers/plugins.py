"""Small builders for plugin tests: download tasks and a plugin context."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from lakeferry.api import DownloadTask, Event, PluginContext

T0 = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


def task_for(url: str, event_id: str = "ev-1", **event_fields: Any) -> DownloadTask:
    return DownloadTask(event=Event(id=event_id, url=url, **event_fields), received_at=T0)


def plugin_context(state_dir: Path, owner: str = "main") -> PluginContext:
    return PluginContext(
        state_dir=state_dir, logger=logging.getLogger("lakeferry.test.plugins"), owner=owner
    )
