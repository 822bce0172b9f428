"""The conformance kit: ready-made pytest test classes a plugin author subclasses.

A plugin's tests inherit every check the daemon relies on instead of rewriting them::

    from lakeferry.testing import DownloaderConformance, DownloadCases

    class TestMemDownloader(DownloaderConformance):
        @pytest.fixture
        def make_downloader(self, lakeferry_context): ...
        @pytest.fixture
        def download_cases(self): ...

- :class:`DownloaderConformance`: streaming in bounded chunks, cancellation, error classes and
  reasons, the network guard (fixtures ``make_downloader``, ``download_cases``);
- :class:`CacheConformance`: write/commit/lookup/open/remove, checksums, abort, quota waits
  (fixture ``make_cache``);
- :class:`SinkConformance`: atomic and idempotent puts, ``stat``, unsafe destinations
  (fixture ``make_sink``);
- :class:`SourceConformance`: ``started()``, every event published intact with an origin of its
  own, malformed bytes passed on, nothing acknowledged before ``publish`` returned (a failing
  or cancelled publish is delivered again by the next run), prompt cancellation (fixtures
  ``make_source``, ``feed``); :class:`RecordingIntake` is the intake it runs sources against
  (it can fail or hold a ``publish``), usable in a source's own tests too.

The pytest plugin :mod:`lakeferry.testing.plugin` (loaded automatically through the
``pytest11`` entry point once lakeferry is installed) provides the shared fixtures
``lakeferry_context`` and ``lakeferry_memory_cache``. Tests are trio tests (``pytest-trio``).
:class:`MemoryCache` and the other stand-ins of :mod:`lakeferry.testing.memory` need no pytest:
a plugin's toy may keep its files in one (the ``cache`` template of ``lakeferry plugin new``).
"""

from typing import TYPE_CHECKING

from lakeferry.api import lazy_exports

if TYPE_CHECKING:
    from lakeferry.testing.cache import CacheConformance
    from lakeferry.testing.downloader import DownloadCases, DownloaderConformance, RemoteFile
    from lakeferry.testing.memory import (
        ChunkRecorder,
        MemoryCache,
        MemoryReservation,
        download_writer,
        make_task,
    )
    from lakeferry.testing.sink import SinkConformance
    from lakeferry.testing.source import IntakeUnavailable, RecordingIntake, SourceConformance

# Each name is imported on first use: the in-memory stand-ins (lakeferry.testing.memory) work
# without pytest, which only the conformance classes need.
__getattr__ = lazy_exports(
    __name__,
    {
        "CacheConformance": "cache",
        "ChunkRecorder": "memory",
        "DownloadCases": "downloader",
        "DownloaderConformance": "downloader",
        "IntakeUnavailable": "source",
        "MemoryCache": "memory",
        "MemoryReservation": "memory",
        "RecordingIntake": "source",
        "RemoteFile": "downloader",
        "SinkConformance": "sink",
        "SourceConformance": "source",
        "download_writer": "memory",
        "make_task": "memory",
    },
)

__all__ = [
    "CacheConformance",
    "ChunkRecorder",
    "DownloadCases",
    "DownloaderConformance",
    "IntakeUnavailable",
    "MemoryCache",
    "MemoryReservation",
    "RecordingIntake",
    "RemoteFile",
    "SinkConformance",
    "SourceConformance",
    "download_writer",
    "make_task",
]
