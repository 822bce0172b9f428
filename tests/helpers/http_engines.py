"""The ``http`` downloader's engines, for test modules that run on each of them.

A module asks for ``http_engine`` (directly or through the fixtures below) and each of its tests
that does runs once per engine (``[httpx]``, ``[curl]``). The parameter is module-scoped so
that a module can give each engine an origin of its own (:func:`engine_origin`): the origin
keeps state per file name (request counts, flaky and ranged routes), and the tests of one
engine must not see the requests of the other.

- ``http_engine``: ``"httpx"`` or ``"curl"``;
- ``engine_origin``: a fresh test origin per engine (a module overrides ``origin`` with it);
- ``downloader``: ``downloader(tmp_path, **settings)`` opens an ``HttpDownloader`` on the
  engine, loopback allowed unless the settings say otherwise;
- :func:`spy_on`: records (and confines to loopback) every connection a downloader makes,
  whichever engine makes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest

from helpers.network import SpyBackend
from helpers.origin import Origin, serve
from helpers.plugins import plugin_context
from lakeferry_http import HttpDownloader, HttpDownloaderSettings
from lakeferry_http.curl_engine import CurlEngine
from lakeferry_http.httpx_engine import HttpxEngine

ENGINES = ("httpx", "curl")


@pytest.fixture(scope="module", params=ENGINES)
def http_engine(request: pytest.FixtureRequest) -> str:
    engine: str = request.param
    return engine


@pytest.fixture(scope="module")
def engine_origin(http_engine: str) -> Iterator[Origin]:
    with serve() as running:
        yield running


@asynccontextmanager
async def open_downloader(
    engine: str, tmp_path: Path, **settings: Any
) -> AsyncIterator[HttpDownloader]:
    settings.setdefault("allow_networks", ["127.0.0.1/32"])
    settings.setdefault("engine", engine)
    d = HttpDownloader(HttpDownloaderSettings(**settings), plugin_context(tmp_path))
    try:
        yield d
    finally:
        await d.aclose()


class DownloaderFactory(Protocol):
    def __call__(
        self, tmp_path: Path, **settings: Any
    ) -> AbstractAsyncContextManager[HttpDownloader]: ...


@pytest.fixture
def downloader(http_engine: str) -> DownloaderFactory:
    return partial(open_downloader, http_engine)


def spy_on(d: HttpDownloader) -> SpyBackend:
    """A spy between the downloader's guard and the network (see :class:`SpyBackend`)."""
    spy = SpyBackend()
    engine = d.engine
    if isinstance(engine, HttpxEngine):
        engine.backend.inner = spy
    else:
        assert isinstance(engine, CurlEngine), engine
        engine.connect_hook = spy.check
    return spy
