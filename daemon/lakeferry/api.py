"""The public plugin API: the one module plugins import from lakeferry.

Everything a plugin needs is re-exported here: the hook marker, the component protocols,
the error types that steer a message's fate, the message types components receive, helpers
for paths and URLs, and the SSRF guard (:class:`NetGuard`) every plugin that opens network
connections to URLs from events must use. A test fails when a built-in plugin imports
anything else from the core.
"""

from lakeferry.components import (
    CacheBackend,
    CacheEntry,
    CacheUsage,
    CacheWriter,
    Downloader,
    DownloadWriter,
    EventRow,
    Intake,
    Inventory,
    InventoryRow,
    PendingFile,
    PluginContext,
    PutOutcome,
    RawEvent,
    Reservation,
    Sink,
    SinkFile,
    SinkItem,
    Source,
    TableState,
)
from lakeferry.errors import ConfigError, PermanentError, PipelineError, Reason, TransientError
from lakeferry.failpoints import failpoint
from lakeferry.groupcommit import BatchFailed, GroupCommit
from lakeferry.hookspecs import (
    RegisterCache,
    RegisterDownloader,
    RegisterInventory,
    RegisterSink,
    RegisterSource,
    hookimpl,
)
from lakeferry.iothreads import IoThreads
from lakeferry.messages import DownloadTask, Event
from lakeferry.netguard import (
    IPAddress,
    NetGuard,
    Resolver,
    guard_from_settings,
    is_public,
    parse_ip_literal,
)
from lakeferry.paths import STAGING, STALE_TEMPORARY, render_destination, safe_relative_path
from lakeferry.registry import (
    lazy_exports,
    lazy_factory,
)
from lakeferry.tablerows import EVENT_FIELDS, RowMapping, StateFile
from lakeferry.units import ByteSize, Duration, LocalPath, LocalPathOrUri
from lakeferry.urls import redact_url

__all__ = [
    "EVENT_FIELDS",
    "STAGING",
    "STALE_TEMPORARY",
    "BatchFailed",
    "ByteSize",
    "CacheBackend",
    "CacheEntry",
    "CacheUsage",
    "CacheWriter",
    "ConfigError",
    "DownloadTask",
    "DownloadWriter",
    "Downloader",
    "Duration",
    "Event",
    "EventRow",
    "GroupCommit",
    "IPAddress",
    "Intake",
    "Inventory",
    "InventoryRow",
    "IoThreads",
    "LocalPath",
    "LocalPathOrUri",
    "NetGuard",
    "PendingFile",
    "PermanentError",
    "PipelineError",
    "PluginContext",
    "PutOutcome",
    "RawEvent",
    "Reason",
    "RegisterCache",
    "RegisterDownloader",
    "RegisterInventory",
    "RegisterSink",
    "RegisterSource",
    "Reservation",
    "Resolver",
    "RowMapping",
    "Sink",
    "SinkFile",
    "SinkItem",
    "Source",
    "StateFile",
    "TableState",
    "TransientError",
    "failpoint",
    "guard_from_settings",
    "hookimpl",
    "is_public",
    "lazy_exports",
    "lazy_factory",
    "parse_ip_literal",
    "redact_url",
    "render_destination",
    "safe_relative_path",
]
