"""How the pipeline's records are keyed and labelled on the bus.

Every topic is keyed by event id, so one event always lives on one partition; a task's
headers repeat, for operators' tools, what its body says (the body is the source of truth).
"""

from __future__ import annotations

from collections.abc import Mapping

from lakeferry.bus.base import OutgoingRecord
from lakeferry.messages import DOWNLOAD, DownloadTask
from lakeferry.retry import (
    ATTEMPT_HEADER,
    FIRST_ERROR_HEADER,
    FIRST_SEEN_HEADER,
    LAST_ERROR_HEADER,
    ORIGIN_HEADER,
)


def event_key(event_id: str) -> bytes:
    """Every topic is keyed by event id, so one event always lives on one partition."""
    return event_id.encode()


def task_headers(task: DownloadTask, origin_topic: str) -> dict[str, bytes]:
    """Informational headers (the body is the source of truth) for operators' tools."""
    headers = {
        ATTEMPT_HEADER: str(task.attempt).encode(),
        ORIGIN_HEADER: origin_topic.encode(),
        FIRST_SEEN_HEADER: task.received_at.isoformat().encode(),
    }
    if task.history:
        headers[FIRST_ERROR_HEADER] = task.history[0].error[:200].encode()
        headers[LAST_ERROR_HEADER] = task.history[-1].error[:200].encode()
    return headers


def task_record(
    topic: str, task: DownloadTask, extra_headers: Mapping[str, bytes] | None = None
) -> OutgoingRecord:
    """A download task on ``topic``: pending, or a retry rung (with its due-time header)."""
    headers = task_headers(task, topic)
    headers.update(extra_headers or {})
    return OutgoingRecord(topic, DOWNLOAD.encode(task), event_key(task.event.id), headers)
