"""``lakeferry plugin new``: the files of a new plugin package, ready to install and test.

The package a site team starts from: ``pyproject.toml`` with the ``lakeferry`` entry point, a
component written against :mod:`lakeferry.api` that already works (a toy the author replaces
step by step: every place to change is marked ``TODO``), tests that subclass the conformance
kit (:mod:`lakeferry.testing`), and a README. The texts are Python strings rather than data
files so that they ship wherever the module does; ``__NAME__`` (the kind), ``__MOD__`` (the
import name), ``__CLASS__`` (the class-name prefix) and ``__SCHEME__`` are filled in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

Kind = Literal["downloader", "cache", "sink"]
KINDS: tuple[Kind, ...] = ("downloader", "cache", "sink")

NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "lakeferry-__NAME__"
version = "0.1.0"
description = "A lakeferry plugin: __KIND__ kind __NAME__."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["lakeferry>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-trio>=0.8"]

# How lakeferry finds the plugin: `lakeferry plugins` lists it once this package is installed.
[project.entry-points.lakeferry]
__NAME__ = "__MOD__"

[tool.setuptools.packages.find]
include = ["__MOD__*"]

[tool.setuptools.package-data]
__MOD__ = ["py.typed"]

[tool.ruff]
line-length = 100

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "ASYNC", "RUF", "SIM", "PT"]

[tool.mypy]
strict = true

[tool.pytest.ini_options]
testpaths = ["tests"]
trio_mode = true
filterwarnings = ["error"]
"""

_README = """\
# lakeferry-__NAME__

A lakeferry plugin providing the __KIND__ kind `__NAME__`.

```sh
pip install -e '.[test]'     # next to lakeferry, in the daemon's environment
pytest                       # the lakeferry conformance kit, see tests/
lakeferry plugins            # lists "__NAME__"
```

Layout: `__MOD__/__init__.py` registers the component (hook `__HOOK__`);
`__MOD__/__KIND__.py` holds its settings (a msgspec Struct, validated by
`lakeferry check-config`) and the component. Replace the toy behaviour marked `TODO` with the
real one and keep `tests/test___MOD__.py` passing: it runs lakeferry's conformance tests for a
__KIND__ (`lakeferry.testing`). The hooks, protocols and rules are in lakeferry's
`docs/plugins.md`.

Configure it in the daemon's TOML:

```toml
__CONFIG__
```
"""

_INIT = '''\
"""lakeferry plugin ``__NAME__``: the __KIND__ kind ``__NAME__``."""

from __future__ import annotations

from lakeferry.api import __REGISTER__, hookimpl

from __MOD__.__KIND__ import (
    __CLASS____KIND_CLASS__,
    __CLASS____KIND_CLASS__Settings,
)

__all__ = ["__CLASS____KIND_CLASS__", "__CLASS____KIND_CLASS__Settings"]


@hookimpl
def __HOOK__(register: __REGISTER__) -> None:
    __REGISTER_CALL__
'''

_DOWNLOADER = '''\
"""The ``__NAME__`` downloader: fetches ``__SCHEME__://`` URLs into the cache, streaming.

TODO: this toy generates its bodies: ``__SCHEME__://<host>/<name>?size=N`` is N bytes derived
from the name, ``/missing/...`` does not exist, ``/error/...`` fails for now, and ``delay=S``
waits S seconds first. Replace :meth:`__CLASS__Downloader._open` and :func:`toy_body` with the
real protocol; keep the shape: stream chunks to ``out`` as they arrive, map every failure to
TransientError / PermanentError with a reason, bound waits with ``timeout``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator
from contextlib import aclosing
from urllib.parse import parse_qs, urlsplit

import msgspec
import trio
from lakeferry.api import (
    ConfigError,
    DownloadTask,
    DownloadWriter,
    Duration,
    NetGuard,
    PermanentError,
    PluginContext,
    Reason,
    TransientError,
    redact_url,
)

CHUNK_SIZE = 256 * 1024


class __CLASS__DownloaderSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[downloaders.__NAME__]``."""

    timeout: Duration = Duration(60)
    """Longest wait for the first byte and between chunks."""
    allow_networks: list[str] = []
    """CIDR networks to reach although not public (the network guard refuses them otherwise)."""
    allow_hosts: list[str] = []
    """Hosts to reach although not public: ``name``, ``name:port``, ``*.domain``."""


async def toy_body(name: str, size: int) -> AsyncGenerator[bytes, None]:
    """TODO: the toy's content (deterministic, so tests know its sha256); replace it."""
    seed = hashlib.sha256(name.encode()).digest()
    block = seed * (CHUNK_SIZE // len(seed))
    for start in range(0, size, CHUNK_SIZE):
        await trio.lowlevel.checkpoint()
        yield block[: min(CHUNK_SIZE, size - start)]


class __CLASS__Downloader:
    """The ``__NAME__`` :class:`lakeferry.api.Downloader`."""

    def __init__(self, settings: __CLASS__DownloaderSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        try:
            self._guard = NetGuard(
                allow_networks=settings.allow_networks, allow_hosts=settings.allow_hosts
            )
        except ValueError as exc:
            raise ConfigError("downloaders.__NAME__", str(exc)) from exc

    async def fetch(self, task: DownloadTask, out: DownloadWriter) -> None:
        url = task.event.url
        shown = redact_url(url)  # never log or raise with secrets in the URL
        # The SSRF guard: refuses loopback, private, link-local... addresses in the URL's text.
        # TODO: a downloader that connects must connect through the guard as well:
        # ``stream = await self._guard.connect_tcp(host, port, timeout=...)``.
        self._guard.check_url(url)
        received = 0
        # TODO: when the origin announces the file's size, ``await out.expect_size(size)``
        # first: the cache reserves it in one step, or refuses a file that can never fit.
        async with aclosing(await self._open(url, shown)) as chunks:  # closed even when cancelled
            while True:
                with trio.move_on_after(self._settings.timeout) as waiting:
                    chunk = await anext(chunks, None)
                if waiting.cancelled_caught:
                    raise TransientError(Reason.TIMEOUT, f"{shown}: no data in time")
                if chunk is None:
                    return
                received += len(chunk)
                if task.event.size is not None and received > task.event.size:
                    raise PermanentError(Reason.SIZE_MISMATCH, f"{shown}: body exceeds its size")
                await out.write(chunk)  # as it arrives: never hold a whole file

    async def _open(self, url: str, shown: str) -> AsyncGenerator[bytes, None]:
        """TODO: start the transfer and return its chunks (replace the toy below)."""
        try:
            parts = urlsplit(url)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            size = int(query.get("size", "0"))
            delay = float(query.get("delay", "0"))
        except ValueError as exc:
            raise PermanentError(Reason.MALFORMED, f"{shown}: {exc}") from None
        path = parts.path.strip("/")
        if path.startswith("missing/"):
            raise PermanentError(Reason.NOT_FOUND, f"{shown}: no such file")
        if path.startswith("error/"):
            raise TransientError(Reason.CONNECTION, f"{shown}: the server failed, try later")
        if delay:
            with trio.move_on_after(self._settings.timeout):
                await trio.sleep(delay)
                return toy_body(path, size)
            raise TransientError(Reason.TIMEOUT, f"{shown}: no answer in {self._settings.timeout}s")
        return toy_body(path, size)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()  # TODO: close clients and connection pools
'''

_DOWNLOADER_TEST = '''\
"""lakeferry's conformance tests for the ``__NAME__`` downloader (lakeferry.testing)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import trio
from lakeferry.api import Downloader, Duration, PluginContext
from lakeferry.testing import DownloadCases, DownloaderConformance, RemoteFile

from __MOD__ import __CLASS__Downloader, __CLASS__DownloaderSettings
from __MOD__.downloader import toy_body

MiB = 2**20


def remote(name: str, size: int) -> RemoteFile:
    """TODO: files your test server holds, with their size and sha256."""
    digest = hashlib.sha256()

    async def read() -> None:
        async for chunk in toy_body(name, size):
            digest.update(chunk)

    trio.run(read)
    return RemoteFile(f"__SCHEME__://test/{name}?size={size}", size, digest.hexdigest())


class Test__CLASS__Downloader(DownloaderConformance):
    @pytest.fixture
    def make_downloader(self, lakeferry_context: PluginContext) -> Callable[[], Downloader]:
        settings = __CLASS__DownloaderSettings(timeout=Duration(0.5))
        return lambda: __CLASS__Downloader(settings, lakeferry_context)

    @pytest.fixture
    def download_cases(self) -> DownloadCases:
        # TODO: point these at a test server (or an emulator) of your protocol.
        return DownloadCases(
            small=remote("small.bin", 5000),
            large=remote("large.bin", 9 * MiB),
            not_found="__SCHEME__://test/missing/file.bin",
            server_error="__SCHEME__://test/error/file.bin",
            timeout="__SCHEME__://test/slow.bin?size=10&delay=5",
            url_to=lambda host, port: f"__SCHEME__://{host}:{port}/file.bin?size=10",
        )
'''

_CACHE = '''\
"""The ``__NAME__`` cache backend: complete, checksummed files under a byte quota.

TODO: this toy keeps files in memory. Replace the storage (``self._files``, the ``_parts`` of a
pending file) with the real one; keep the rules: a file is published only by ``commit``, after
its size and sha256 are checked, and ``abort`` leaves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import trio
from lakeferry.api import ByteSize, CacheEntry, CacheUsage, PermanentError, PluginContext, Reason

READ_CHUNK = 256 * 1024


class __CLASS__CacheSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[cache]`` with ``kind = "__NAME__"``."""

    quota: ByteSize = ByteSize(2**30)
    unknown_size_estimate: ByteSize = ByteSize(64 * 2**20)


class __CLASS__PendingFile:
    """A file being written (a :class:`lakeferry.api.PendingFile`), hashed on the fly."""

    def __init__(self, cache: __CLASS__Cache, key: str) -> None:
        self._cache = cache
        self._key = key
        self._parts: list[bytes] = []
        self._hash = hashlib.sha256()
        self._written = 0
        self._validator: str | None = None
        self._finished = False

    @property
    def bytes_written(self) -> int:
        return self._written

    @property
    def offset(self) -> int:
        return 0

    @property
    def validator(self) -> str | None:
        return self._validator

    def set_validator(self, value: str | None) -> None:
        self._validator = value

    async def restart(self) -> None:
        await trio.lowlevel.checkpoint()
        self._parts, self._hash, self._written = [], hashlib.sha256(), 0

    async def write(self, chunk: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._finished:
            raise RuntimeError("write after commit or abort")
        self._parts.append(bytes(chunk))
        self._hash.update(chunk)
        self._written += len(chunk)

    async def commit(self, *, expected_sha256: str | None, expected_size: int | None) -> CacheEntry:
        await trio.lowlevel.checkpoint()
        self._finished = True
        digest = self._hash.hexdigest()
        if expected_size is not None and self._written != expected_size:
            raise PermanentError(Reason.SIZE_MISMATCH, f"{self._written} != {expected_size} bytes")
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise PermanentError(Reason.CHECKSUM_MISMATCH, f"received sha256 {digest}")
        self._cache.publish(self._key, b"".join(self._parts))
        return CacheEntry(self._key, self._written, digest)

    async def abort(self, *, keep_partial: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        self._finished = True
        self._parts.clear()


class _Reservation:
    """Room one running download holds (a :class:`lakeferry.api.Reservation`)."""

    def __init__(self, cache: __CLASS__Cache, size: int) -> None:
        self._cache = cache
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def grow(self, size: int) -> None:
        if size <= self._size:
            await trio.lowlevel.checkpoint()
            return
        await self._cache.admit(size - self._size, size)
        self._size = size


class __CLASS__Cache:
    """The ``__NAME__`` :class:`lakeferry.api.CacheBackend`."""

    def __init__(self, settings: __CLASS__CacheSettings, context: PluginContext) -> None:
        self._settings = settings
        self._quota = int(settings.quota)
        self._files: dict[str, bytes] = {}
        self._reserved = 0
        self._room = trio.Condition()

    def publish(self, key: str, data: bytes) -> None:
        self._files[key] = data

    @property
    def _used(self) -> int:
        return sum(len(d) for d in self._files.values())

    async def lookup(self, key: str) -> CacheEntry | None:
        await trio.lowlevel.checkpoint()
        data = self._files.get(key)
        if data is None:
            return None
        return CacheEntry(key, len(data), hashlib.sha256(data).hexdigest())

    @asynccontextmanager
    async def reserve(self, expected_size: int | None) -> AsyncIterator[_Reservation]:
        if expected_size is None:  # an estimate, never more than the whole quota
            need = min(int(self._settings.unknown_size_estimate), self._quota)
        else:
            need = expected_size
        await self.admit(need, need)
        reservation = _Reservation(self, need)
        try:
            yield reservation
        finally:
            self._reserved -= reservation.size
            await self._wake()

    async def admit(self, need: int, total: int) -> None:
        """Wait until ``need`` more bytes fit; a file of ``total`` bytes must fit at all."""
        if total > self._quota:
            raise PermanentError(Reason.TOO_LARGE, f"{total} bytes exceed the quota {self._quota}")
        # TODO: growth ahead of new reservations, and a way out when every holder waits to
        # grow (see lakeferry_localfs.quota for both).
        async with self._room:
            while self._used + self._reserved + need > self._quota and (
                self._used or self._reserved
            ):
                await self._room.wait()  # a full cache makes downloads wait, never fail
            self._reserved += need

    async def _wake(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._room:
                self._room.notify_all()

    async def create(self, key: str, *, resume: bool = False) -> __CLASS__PendingFile:
        await trio.lowlevel.checkpoint()
        return __CLASS__PendingFile(self, key)

    @asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        data = self._files.get(key)
        if data is None:
            raise FileNotFoundError(key)
        yield _Chunks(data)

    def local_path(self, key: str) -> Path | None:
        return None  # TODO: the file's path, if the backend keeps files on local disk

    async def remove(self, key: str) -> None:
        self._files.pop(key, None)
        await self._wake()

    def usage(self) -> CacheUsage:
        return CacheUsage(self._used, len(self._files), self._quota)

    async def refresh(self) -> CacheUsage:
        await trio.lowlevel.checkpoint()  # TODO: re-read what other processes changed
        return self.usage()

    def set_quota(self, quota: int) -> None:
        self._quota = quota

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _Chunks:
    """A file's bytes in pieces (a plain async iterator: stopping early leaves nothing open)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self._at >= len(self._data):
            raise StopAsyncIteration
        self._at += READ_CHUNK
        return self._data[self._at - READ_CHUNK : self._at]
'''

_CACHE_TEST = '''\
"""lakeferry's conformance tests for the ``__NAME__`` cache (lakeferry.testing)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lakeferry.api import ByteSize, CacheBackend, PluginContext
from lakeferry.testing import CacheConformance

from __MOD__ import __CLASS__Cache, __CLASS__CacheSettings


class Test__CLASS__Cache(CacheConformance):
    @pytest.fixture
    def make_cache(self, lakeferry_context: PluginContext) -> Callable[[int], CacheBackend]:
        def make(quota: int) -> CacheBackend:
            return __CLASS__Cache(__CLASS__CacheSettings(quota=ByteSize(quota)), lakeferry_context)

        return make
'''

_SINK = '''\
"""The ``__NAME__`` sink: lands cached files atomically and idempotently.

TODO: this toy lands files in a local directory (``root``): it writes a temporary file (in this
process's staging folder, which its next start sweeps), checks its size and sha256, then
renames it into place. Replace the storage calls with the real
service's (upload to a temporary name, verify, rename); keep the rules: skip a destination that
already holds the same bytes, never leave a partial file visible, refuse unsafe paths.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import trio
from lakeferry.api import (
    STAGING,
    CacheEntry,
    Event,
    PermanentError,
    PluginContext,
    PutOutcome,
    Reason,
    SinkFile,
    SinkItem,
    render_destination,
    safe_relative_path,
)


class __CLASS__SinkSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[sink]`` with ``kind = "__NAME__"``."""

    root: str
    path_template: str = "{event.id}/{filename}"


def _sha256(path: Path) -> CacheEntry | None:
    try:
        data = path.read_bytes()  # TODO: the service's stored checksum, or hash in pieces
    except (FileNotFoundError, IsADirectoryError):
        return None
    return CacheEntry(path.name, len(data), hashlib.sha256(data).hexdigest())


class __CLASS__Sink:
    """The ``__NAME__`` :class:`lakeferry.api.Sink`."""

    def __init__(self, settings: __CLASS__SinkSettings, context: PluginContext) -> None:
        self._settings = settings
        self._root = Path(settings.root)
        self._root.mkdir(parents=True, exist_ok=True)
        # Temporary files of puts: in this process's own staging folder, never beside landed
        # files, so that its next start can sweep what a kill left behind.
        self._staging = self._root / STAGING / context.owner

    def destination(self, event: Event, *, now: dt.datetime) -> str:
        return render_destination(self._settings.path_template, event, now)

    async def stat(self, destination: str) -> CacheEntry | None:
        target = self._root / safe_relative_path(destination)
        return await trio.to_thread.run_sync(_sha256, target)

    async def put(self, file: SinkFile, destination: str, event: Event) -> PutOutcome:
        rel = safe_relative_path(destination)  # PermanentError(invalid_path) when unsafe
        held = await self.stat(rel)
        if held is not None and (held.size, held.sha256) == (file.size, file.sha256):
            return PutOutcome(rel, skipped=True)
        target = self._root / rel
        tmp = self._staging / secrets.token_hex(8)

        def prepare() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._staging.mkdir(parents=True, exist_ok=True)

        await trio.to_thread.run_sync(prepare)
        digest, size = hashlib.sha256(), 0
        try:
            with tmp.open("xb") as out:
                async with file.cache.open(file.key) as chunks:
                    async for chunk in chunks:
                        digest.update(chunk)
                        size += len(chunk)
                        await trio.to_thread.run_sync(out.write, chunk)
            if (size, digest.hexdigest()) != (file.size, file.sha256):
                raise PermanentError(Reason.CHECKSUM_MISMATCH, f"{rel}: cached bytes changed")
            await trio.to_thread.run_sync(os.replace, tmp, target)
        except FileNotFoundError as exc:
            raise PermanentError(Reason.CACHE_MISSING, f"{rel}: the cached file is gone") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return PutOutcome(rel, skipped=False)

    async def sweep(self) -> int:
        def sweep() -> int:  # TODO: also other owners' temporary files older than a day
            left = list(self._staging.iterdir()) if self._staging.exists() else []
            for path in left:
                path.unlink(missing_ok=True)
            return len(left)

        return await trio.to_thread.run_sync(sweep)

    async def walk(self) -> AsyncIterator[SinkItem]:
        def listing() -> list[SinkItem]:
            items = []
            for path in sorted(p for p in self._root.rglob("*") if p.is_file()):
                rel = path.relative_to(self._root).as_posix()
                items.append(SinkItem(rel, rel.startswith(STAGING + "/")))
            return items

        for item in await trio.to_thread.run_sync(listing):
            yield item

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
'''

_SINK_TEST = '''\
"""lakeferry's conformance tests for the ``__NAME__`` sink (lakeferry.testing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lakeferry.api import PluginContext, Sink
from lakeferry.testing import SinkConformance

from __MOD__ import __CLASS__Sink, __CLASS__SinkSettings


class Test__CLASS__Sink(SinkConformance):
    @pytest.fixture
    def make_sink(self, tmp_path: Path, lakeferry_context: PluginContext) -> Callable[[], Sink]:
        # TODO: a test container of the real service
        settings = __CLASS__SinkSettings(root=str(tmp_path / "sink"))
        return lambda: __CLASS__Sink(settings, lakeferry_context)
'''

_REGISTER = """register(
        __ARGS__,
        __CLASS____KIND_CLASS__,
        __CLASS____KIND_CLASS__Settings,
    )"""

_PER_KIND: dict[Kind, dict[str, str]] = {
    "downloader": {
        "module": _DOWNLOADER,
        "test": _DOWNLOADER_TEST,
        "__KIND_CLASS__": "Downloader",
        "__HOOK__": "lakeferry_register_downloaders",
        "__REGISTER__": "RegisterDownloader",
        "__REGISTER_CALL__": _REGISTER.replace("__ARGS__", '"__NAME__",\n        ("__SCHEME__",)'),
        "__CONFIG__": '[downloaders.__NAME__]\ntimeout = "60s"',
    },
    "cache": {
        "module": _CACHE,
        "test": _CACHE_TEST,
        "__KIND_CLASS__": "Cache",
        "__HOOK__": "lakeferry_register_caches",
        "__REGISTER__": "RegisterCache",
        "__REGISTER_CALL__": _REGISTER.replace("__ARGS__", '"__NAME__"'),
        "__CONFIG__": '[cache]\nkind = "__NAME__"\nquota = "20GiB"',
    },
    "sink": {
        "module": _SINK,
        "test": _SINK_TEST,
        "__KIND_CLASS__": "Sink",
        "__HOOK__": "lakeferry_register_sinks",
        "__REGISTER__": "RegisterSink",
        "__REGISTER_CALL__": _REGISTER.replace("__ARGS__", '"__NAME__"'),
        "__CONFIG__": '[sink]\nkind = "__NAME__"\nroot = "/data/landing"',
    },
}


def render(name: str, kind: Kind) -> dict[str, str]:
    """The package's files, by path relative to its directory. ValueError for a bad name."""
    if not NAME.match(name):
        raise ValueError(
            f"plugin name {name!r}: use lower-case letters and digits, words joined by - or _"
        )
    if kind not in _PER_KIND:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    spec = _PER_KIND[kind]
    module = "lakeferry_" + name.replace("-", "_")
    tokens = {  # in order: values may hold the tokens after them
        "__REGISTER_CALL__": spec["__REGISTER_CALL__"],
        "__CONFIG__": spec["__CONFIG__"],
        **{k: v for k, v in spec.items() if k.startswith("__")},
        "__KIND__": kind,
        "__MOD__": module,
        "__CLASS__": "".join(part.capitalize() for part in re.split(r"[-_]", name)),
        "__SCHEME__": name.replace("_", "-"),
        "__NAME__": name,
    }

    def fill(text: str) -> str:
        for token, value in tokens.items():
            text = text.replace(token, value)
        return text

    return {
        "pyproject.toml": fill(_PYPROJECT),
        "README.md": fill(_README),
        f"{module}/__init__.py": fill(_INIT),
        f"{module}/{kind}.py": fill(spec["module"]),
        f"{module}/py.typed": "",
        f"tests/test_{module}.py": fill(spec["test"]),
    }


def write(name: str, kind: Kind, directory: Path) -> Path:
    """Write the package into ``directory / "lakeferry-<name>"``; FileExistsError if present."""
    target = directory / f"lakeferry-{name}"
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    for rel, text in render(name, kind).items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target
