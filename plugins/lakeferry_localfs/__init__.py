"""lakeferry built-in plugin ``localfs``: a cache directory with a byte quota, and a local sink.

- cache kind ``localfs`` (:class:`~lakeferry_localfs.cache.LocalFsCache`): complete files under
  a directory, published atomically with their checksum (an xattr), admission-controlled by a
  quota;
- sink kind ``localfs`` (:class:`~lakeferry_localfs.sink.LocalFsSink`): lands files under a root
  directory, hard-linked from the cache when possible, skipping identical files.
"""

from __future__ import annotations

from lakeferry.api import RegisterCache, RegisterSink, hookimpl
from lakeferry_localfs.cache import LocalFsCache, LocalFsCacheSettings
from lakeferry_localfs.sink import LocalFsSink, LocalFsSinkSettings

__all__ = ["LocalFsCache", "LocalFsCacheSettings", "LocalFsSink", "LocalFsSinkSettings"]


@hookimpl
def lakeferry_register_caches(register: RegisterCache) -> None:
    register("localfs", LocalFsCache, LocalFsCacheSettings)


@hookimpl
def lakeferry_register_sinks(register: RegisterSink) -> None:
    register("localfs", LocalFsSink, LocalFsSinkSettings)
