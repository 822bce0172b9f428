"""The ``onelake`` sink: lands cached files in OneLake or any ADLS Gen2 account, atomically.

Every request is a call of the Azure SDK's synchronous clients in a worker thread (their aio
clients are asyncio and cannot run under trio), all over one ``requests`` session whose pool
holds ``max_connections`` connections, as many as the worker threads the sink uses at once. The
session reads the environment (proxies, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) once, when the
sink is built, instead of on every request.

``api = "blob"`` (the default): through the Blob endpoint that OneLake and ADLS Gen2 serve
beside the DFS one (``account_url`` with ``.dfs.`` turned into ``.blob.``), azure-storage-blob:

- A file of at most ``chunk_size`` bytes: read whole from the cache (in the same worker thread
  when the cache is on local disk) and checked against the cache's size and sha256
  (PermanentError ``size_mismatch`` / ``checksum_mismatch`` / ``cache_missing``), then one Put
  Blob that only creates (If-None-Match ``*``), with the metadata ``lakeferry_sha256`` and
  ``lakeferry_event_id`` and Content-MD5 (``validate_content``), which the service checks. If
  something is there already (409), its properties decide: the same size and
  ``lakeferry_sha256`` -> the put reports ``skipped`` (idempotency); a directory -> PermanentError
  ``invalid_path``; anything else is replaced by a Put Blob that overwrites. A new small file
  costs one request and one worker-thread hop.
- A larger file: its properties first (skipped as above), then one Put Block per ``chunk_size``
  bytes (Content-MD5 each, never the whole file in memory), hashing what is sent, and, once size
  and sha256 match the cache's record, one Put Block List with the metadata (refused as
  ``InvalidBlockList`` when the SDK repeats it after a lost response: the blocks are committed
  already, and the properties then decide).

Put Blob and Put Block List are atomic by themselves: a reader sees the old file or the new one,
never a partial one; blocks not committed are invisible and the service drops them after a week.
There is no temporary path, so nothing to rename, journal or sweep. The response of the
committing request is the proof: there is no read-back.

``api = "dfs"``: through the DFS endpoint, azure-storage-file-datalake:

1. Read the target's properties. A file whose size and ``lakeferry_sha256`` metadata match the
   cached file is left alone: the put reports ``skipped``.
2. Create ``.<name>.lakeferry-tmp-<uuid>`` in the target's directory (parent directories are
   created by the service, so the rename below needs no request of its own) with the metadata
   ``lakeferry_sha256`` and ``lakeferry_event_id``, after writing its path down in this
   process's journal of temporary files (:mod:`lakeferry_onelake.temporaries`).
   The SDK's ``flush_data`` takes no metadata, so it is set here, as the SDK's own
   ``upload_data`` does; flush and rename keep it.
3. Stream the cached file into it, one ``append_data`` per ``chunk_size`` bytes (never the whole
   file in memory), hashing what is sent; refuse to commit bytes whose sha256 or size differ
   from the cache's record (PermanentError ``checksum_mismatch`` / ``size_mismatch``).
4. ``flush_data`` (commit, ``close=True``), then ``rename_file`` onto the target, replacing an
   older file: a reader sees the old file or the new one, never a partial one.
5. Read the target's properties again and check size and checksum metadata.

Temporary files (``dfs`` only): a failed put deletes its temporary file (best effort, shielded
from cancellation, for at most 10 s); one that cannot be deleted (the sink is down) is retried by
later successful puts. One left by a killed process is in that process's journal (in the state
folder, named after :attr:`lakeferry.api.PluginContext.owner`), and its next start deletes it
before the first put (:meth:`OneLakeSink.sweep`, with either ``api``, so a switch from ``dfs`` to
``blob`` leaves nothing behind) — no listing of the lake needed. A process that never comes back
leaves its leftovers to ``lakeferry audit`` (``temp_files``) and to a lifecycle rule or ``azcopy
remove --include-pattern '.*.lakeferry-tmp-*'``.

``stat`` reads the properties: size and the ``lakeferry_sha256`` metadata; for a file landed by
something else, without that metadata, it downloads and hashes the file.

Destinations come from :func:`render_destination` (already checked for safety) below
``base_path``; the returned destination is that relative path, which ``stat`` accepts back.

Cancellation: a request already sent runs to its end in its worker thread (at most ``timeout``
per attempt); the put then stops (``dfs``: and cleans up).

Error handling: see :mod:`lakeferry_onelake.errors`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import trio
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobBlock, BlobClient, ContainerClient
from azure.storage.filedatalake import (
    DataLakeFileClient,
    DataLakeServiceClient,
    FileSystemClient,
    LinearRetry,
)
from requests import Session
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from urllib3.util.retry import Retry

from lakeferry.api import (
    CacheEntry,
    ConfigError,
    Event,
    PermanentError,
    PipelineError,
    PluginContext,
    PutOutcome,
    Reason,
    SinkFile,
    SinkItem,
    TransientError,
    render_destination,
    safe_relative_path,
)
from lakeferry_onelake.credentials import build_credential
from lakeferry_onelake.errors import FILESYSTEM_MISSING, SINK_CONFLICT, classify, error_code
from lakeferry_onelake.settings import PERCENT_ESCAPE, OneLakeSinkSettings, check_base_path
from lakeferry_onelake.temporaries import TemporaryJournal

META_SHA256 = "lakeferry_sha256"
META_EVENT_ID = "lakeferry_event_id"
TMP_MARK = ".lakeferry-tmp-"
"""Marks a temporary file's name (``walk`` reports such files as temporary)."""
ORPHANS_PER_PUT = 4
"""Leftover temporary files a successful put tries to delete."""
CLEANUP_TIMEOUT = 10.0
"""Longest a failed or cancelled put waits for its temporary file's deletion."""

T = TypeVar("T")


class Held(NamedTuple):
    """What the sink holds at a path."""

    size: int
    metadata: dict[str, str]
    is_directory: bool


def _event_id_metadata(event_id: str) -> str:
    # Metadata travels in HTTP headers: keep it printable ASCII.
    if event_id.isascii() and event_id.isprintable():
        return event_id
    return event_id.encode("utf-8").hex()


def _tmp_name(path: str) -> str:
    parent, _, name = path.rpartition("/")
    # '%' in the temporary name would be decoded by the SDK's rename; keep names short.
    visible = name.replace("%", "_")[:100]
    tmp = f".{visible}{TMP_MARK}{uuid.uuid4().hex}"
    return f"{parent}/{tmp}" if parent else tmp


def _same(held: Held | None, file: SinkFile, rel: str) -> bool:
    """Whether the sink already holds ``file`` (size and sha256 metadata); PermanentError when
    a directory is in the way."""
    if held is None:
        return False
    if held.is_directory:
        raise PermanentError(Reason.INVALID_PATH, f"destination {rel!r} is a directory in the sink")
    return held.size == file.size and held.metadata.get(META_SHA256) == file.sha256


def _check(rel: str, file: SinkFile, size: int, sha256: str) -> None:
    """PermanentError when what was read from the cache is not what the cache recorded."""
    if size != file.size:
        raise PermanentError(
            Reason.SIZE_MISMATCH, f"cached file for {rel!r} has {size} bytes, expected {file.size}"
        )
    if sha256 != file.sha256:
        raise PermanentError(
            Reason.CHECKSUM_MISMATCH,
            f"cached file for {rel!r} has sha256 {sha256}, expected {file.sha256}",
        )


def _read_checked(local: Path, file: SinkFile, rel: str) -> bytes:
    """In a worker thread: a small cached file's bytes, checked against the cache's record."""
    try:
        data = local.read_bytes()
    except FileNotFoundError as exc:
        raise PermanentError(Reason.CACHE_MISSING, "the cached file is gone before upload") from exc
    _check(rel, file, len(data), hashlib.sha256(data).hexdigest())
    return data


def blob_account_url(account_url: str) -> str:
    """The Blob endpoint beside a DFS endpoint, derived as the SDK derives it."""
    return account_url.replace(".dfs.", ".blob.", 1)


def _session(settings: OneLakeSinkSettings) -> tuple[Session, str | bool]:
    """One requests session for every call, and the TLS verification setting.

    Its pool is as large as the thread limiter (``max_connections``), so concurrent uploads
    reuse connections instead of urllib3 discarding them ("connection pool is full"). The
    environment (proxies, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``) is read
    once, here: with ``trust_env`` on, requests reads it again for every request, looks for a
    ``~/.netrc`` each time, and that was 6 % of the daemon's samples on the Azure path.
    """
    session = Session()
    adapter = HTTPAdapter(
        pool_connections=4,
        pool_maxsize=settings.max_connections,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.proxies.update(get_environ_proxies(settings.account_url))
    session.proxies.update(get_environ_proxies(blob_account_url(settings.account_url)))
    session.trust_env = False
    verify: str | bool = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    return session, verify


def _build_clients(
    settings: OneLakeSinkSettings, credential: Any
) -> tuple[DataLakeServiceClient, ContainerClient]:
    """The DFS client, and the Blob client of the same filesystem; one transport for both."""
    session, verify = _session(settings)
    transport = RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=settings.timeout,
        read_timeout=settings.timeout,
        connection_verify=verify,
    )
    # The SDK's default retry waits 15 s before its first retry; keep its retries few and
    # about a second apart, and leave longer waits to the upload stage (which honours
    # Retry-After and shares one circuit breaker between all uploads).
    retry = LinearRetry(
        backoff=1,
        retry_total=settings.max_single_request_retries,
        random_jitter_range=0.5,  # type: ignore[arg-type]
    )
    service = DataLakeServiceClient(
        settings.account_url,
        credential=credential,
        transport=transport,
        retry_policy=retry,
    )
    container = ContainerClient(
        blob_account_url(settings.account_url),
        settings.filesystem,
        credential=credential,
        transport=transport,
        retry_policy=retry,
        # one Put Blob up to chunk_size (the service takes up to 5000 MiB in one)
        max_single_put_size=settings.chunk_size,
        max_block_size=settings.chunk_size,
    )
    return service, container


def _held(size: int | None, metadata: dict[str, str] | None) -> Held:
    """What a path's properties say (the DFS and the Blob endpoint's alike)."""
    meta = dict(metadata or {})
    return Held(int(size or 0), meta, meta.get("hdi_isfolder", "").lower() == "true")


class OneLakeSink:
    """The ``onelake`` :class:`lakeferry.api.Sink`."""

    def __init__(self, settings: OneLakeSinkSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        self._base = check_base_path(settings.base_path)
        self._credential = build_credential(settings)
        try:
            self._service, self._container = _build_clients(settings, self._credential)
        except ValueError as exc:  # e.g. "Token credential is only supported with HTTPS."
            self._close_credential()
            raise ConfigError(
                "sink.account_url", f"{exc} (credential = {settings.credential!r})"
            ) from None
        self._fs: FileSystemClient = self._service.get_file_system_client(settings.filesystem)
        self._limiter = trio.CapacityLimiter(settings.max_connections)
        self._filesystem_checked = not settings.create_filesystem
        self._filesystem_lock = trio.Lock()
        self._orphans: set[str] = set()
        self._journal = TemporaryJournal(
            context.state_dir / "onelake" / f"temporaries-{context.owner}.txt"
        )

    @property
    def where(self) -> str:
        """The sink's root, for messages: ``<account_url>/<filesystem>/<base_path>``."""
        return "/".join(
            p
            for p in (self._settings.account_url.rstrip("/"), self._settings.filesystem, self._base)
            if p
        )

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, SDK errors turned into PipelineErrors."""
        try:
            return await trio.to_thread.run_sync(
                partial(fn, *args, **kwargs), limiter=self._limiter
            )
        except PipelineError:
            raise
        except Exception as exc:
            error = classify(
                exc, what, filesystem=self._settings.filesystem,
                account_url=self._settings.account_url,
            )  # fmt: skip
            if error is None:
                raise
            raise error from exc

    def _target(self, destination: str) -> tuple[str, str]:
        """The checked relative destination, and the path inside the filesystem."""
        rel = safe_relative_path(destination)
        path = f"{self._base}/{rel}" if self._base else rel
        if PERCENT_ESCAPE.search(path.rpartition("/")[0]):
            raise PermanentError(
                Reason.INVALID_PATH,
                f"destination {rel!r}: a directory containing a %XX sequence cannot be renamed "
                "into by azure-storage-file-datalake (it decodes the rename source)",
            )
        return rel, path

    def _file(self, path: str) -> DataLakeFileClient:
        return self._fs.get_file_client(path)

    def _properties(self, path: str) -> Held | None:
        """In a worker thread: the path's size and metadata, or None when absent."""
        try:
            props = self._file(path).get_file_properties()
        except ResourceNotFoundError as exc:
            if error_code(exc) in FILESYSTEM_MISSING:
                raise
            return None
        return _held(props.size, props.metadata)

    async def _ensure_filesystem(self) -> None:
        if self._filesystem_checked:
            return
        async with self._filesystem_lock:
            if self._filesystem_checked:
                return

            def create() -> None:
                with contextlib.suppress(ResourceExistsError):
                    self._fs.create_file_system()

            await self._call(f"create filesystem {self._settings.filesystem!r}", create)
            self._filesystem_checked = True

    # -- the Sink protocol ---------------------------------------------------------------------

    def destination(self, event: Event, *, now: dt.datetime) -> str:
        return render_destination(self._settings.path_template, event, now)

    async def stat(self, destination: str) -> CacheEntry | None:
        rel, path = self._target(destination)
        await self._ensure_filesystem()
        held = await self._call(f"stat {rel!r}", self._properties, path)
        if held is None or held.is_directory:
            return None
        recorded = held.metadata.get(META_SHA256, "")
        if len(recorded) == 64:
            return CacheEntry(rel, held.size, recorded)
        size, digest = await self._call(f"hash {rel!r}", self._remote_sha256, path)
        return CacheEntry(rel, size, digest)

    def _remote_sha256(self, path: str) -> tuple[int, str]:
        h = hashlib.sha256()
        size = 0
        for chunk in self._file(path).download_file().chunks():
            h.update(chunk)
            size += len(chunk)
        return size, h.hexdigest()

    async def put(self, file: SinkFile, destination: str, event: Event) -> PutOutcome:
        rel, path = self._target(destination)
        await self._ensure_filesystem()
        metadata = {META_SHA256: file.sha256, META_EVENT_ID: _event_id_metadata(event.id)}
        if self._settings.api == "blob":
            return await self._put_blob(file, rel, path, metadata)
        held = await self._call(f"stat {rel!r}", self._properties, path)
        if _same(held, file, rel):
            return PutOutcome(rel, skipped=True)

        tmp = _tmp_name(path)
        tmp_client = self._file(tmp)
        self._journal.begin(tmp)  # before it exists: a kill from here on leaves it listed
        try:
            await self._call(f"create {tmp!r}", tmp_client.create_file, metadata=metadata)
            size = await self._stream(file, tmp_client, rel)
            await self._call(f"flush {tmp!r}", tmp_client.flush_data, size, close=True)
            await self._call(
                f"rename to {rel!r}", tmp_client.rename_file, f"{self._settings.filesystem}/{path}"
            )
            self._journal.end(tmp)
        except BaseException:
            # Shielded so a cancelled put cleans up too, but bounded: a sink that does not
            # answer must not hold up a shutdown (the file is then left for a later put).
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                await self._delete_quietly(tmp)
            raise
        await self._verify(file, rel, path)
        await self._delete_orphans()
        return PutOutcome(rel, skipped=False)

    # -- api = "blob" --------------------------------------------------------------------------

    def _blob_properties(self, blob: BlobClient) -> Held | None:
        """In a worker thread: what the Blob endpoint holds at ``blob``, or None."""
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError as exc:
            if error_code(exc) in FILESYSTEM_MISSING:
                raise
            return None
        return _held(props.size, props.metadata)

    def _put_small(self, path: str, data: bytes, file: SinkFile, rel: str,
                   metadata: dict[str, str]) -> bool:  # fmt: skip
        """In a worker thread: one Put Blob of ``data`` that only creates (If-None-Match ``*``);
        when something is already there, skip it if it is this file, else overwrite it. True
        when skipped. A new file costs one request, a redelivered one two (409, HEAD). The
        SDK's client for the path is built here too, off the event loop (0.3-0.6 ms each)."""
        blob = self._container.get_blob_client(path)
        put = partial(
            blob.upload_blob, data, length=len(data), metadata=metadata, validate_content=True
        )
        try:
            put(overwrite=False)
        except ResourceExistsError:
            if _same(self._blob_properties(blob), file, rel):
                return True
            put(overwrite=True)
        return False

    async def _put_blob(
        self, file: SinkFile, rel: str, path: str, metadata: dict[str, str]
    ) -> PutOutcome:
        """Land ``file`` at ``path`` with one Put Blob (at most ``chunk_size`` bytes) or Put Block
        per chunk + Put Block List: each atomic, nothing visible before it, no temporary path.
        Bytes are checked against the cache's size and sha256 before the committing request,
        and sent with Content-MD5 (``validate_content``), which the service checks."""
        local = file.cache.local_path(file.key)
        if file.size <= self._settings.chunk_size:
            if local is not None:
                # The common case, in one worker thread: read and check the cached file, put
                # it. One thread hop, one request.
                def put_small() -> bool:
                    data = _read_checked(local, file, rel)
                    return self._put_small(path, data, file, rel, metadata)

                skipped = await self._call(f"put {rel!r}", put_small)
            else:
                data = await self._read_whole(file, rel)
                skipped = await self._call(
                    f"put {rel!r}", self._put_small, path, data, file, rel, metadata
                )
            return PutOutcome(rel, skipped=skipped)
        blob = self._container.get_blob_client(path)
        # Large: look first (a redelivered large file is not sent again), then the blocks.
        held = await self._call(f"stat {rel!r}", self._blob_properties, blob)
        if _same(held, file, rel):
            return PutOutcome(rel, skipped=True)
        prefix = uuid.uuid4().hex
        blocks: list[BlobBlock] = []
        h = hashlib.sha256()

        def stage_block(piece: bytes, block_id: str) -> None:
            h.update(piece)
            blob.stage_block(block_id, piece, length=len(piece), validate_content=True)

        async def stage(piece: bytes, position: int) -> None:
            block_id = f"{prefix}-{len(blocks):06d}"  # ids of one blob must be equally long
            await self._call(f"put block of {rel!r} at {position}", stage_block, piece, block_id)
            blocks.append(BlobBlock(block_id))

        await self._chunks(file, rel, stage, h)
        # Uncommitted blocks are invisible, and the service drops them after a week.
        await self._call(f"commit {rel!r}", self._commit, blob, blocks, file, rel, metadata)
        return PutOutcome(rel, skipped=False)

    def _commit(self, blob: BlobClient, blocks: list[BlobBlock], file: SinkFile, rel: str,
                metadata: dict[str, str]) -> None:  # fmt: skip
        """In a worker thread: Put Block List. When the SDK sent it again because the first
        response was lost, the blocks are committed by then and the retry is refused (400
        ``InvalidBlockList``): the file is there if its size and sha256 say so."""
        try:
            blob.commit_block_list(blocks, metadata=metadata)
        except HttpResponseError as exc:
            if error_code(exc) != "InvalidBlockList" or not _same(
                self._blob_properties(blob), file, rel
            ):
                raise

    async def _read_whole(self, file: SinkFile, rel: str) -> bytes:
        """The cached file (at most ``chunk_size``), read through the cache and checked."""
        pieces: list[bytes] = []
        h = hashlib.sha256()

        async def keep(piece: bytes, position: int) -> None:
            await trio.to_thread.run_sync(h.update, piece)
            pieces.append(piece)

        await self._chunks(file, rel, keep, h)
        return b"".join(pieces)

    # -- api = "dfs" ---------------------------------------------------------------------------

    async def _stream(self, file: SinkFile, client: DataLakeFileClient, rel: str) -> int:
        """Append the cached file in ``chunk_size`` pieces; its size once checked."""
        h = hashlib.sha256()

        def append(piece: bytes, offset: int) -> None:
            h.update(piece)
            client.append_data(piece, offset=offset, length=len(piece))

        async def send(piece: bytes, position: int) -> None:
            await self._call(f"append to {rel!r} at {position}", append, piece, position)

        return await self._chunks(file, rel, send, h)

    async def _chunks(
        self,
        file: SinkFile,
        rel: str,
        send: Callable[[bytes, int], Awaitable[None]],
        h: Any,
    ) -> int:
        """Hand the cached file to ``send`` in ``chunk_size`` pieces (with their offsets), then
        check what ``h`` (a sha256 that ``send`` updates) and the size say against the cache's
        record: PermanentError ``size_mismatch`` / ``checksum_mismatch``."""
        chunk_size = self._settings.chunk_size
        position = 0
        buffer = bytearray()
        try:
            async with file.cache.open(file.key) as chunks:
                async for chunk in chunks:
                    buffer += chunk
                    while len(buffer) >= chunk_size:
                        piece = bytes(buffer[:chunk_size])
                        del buffer[:chunk_size]
                        await send(piece, position)
                        position += len(piece)
        except FileNotFoundError as exc:
            raise PermanentError(
                Reason.CACHE_MISSING, "the cached file is gone before upload"
            ) from exc
        if buffer:
            await send(bytes(buffer), position)
            position += len(buffer)
        _check(rel, file, position, h.hexdigest())
        return position

    async def _verify(self, file: SinkFile, rel: str, path: str) -> None:
        held = await self._call(f"verify {rel!r}", self._properties, path)
        if held is None or held.size != file.size or held.metadata.get(META_SHA256) != file.sha256:
            found = (
                "nothing"
                if held is None
                else f"{held.size} bytes, sha256 {held.metadata.get(META_SHA256)}"
            )
            raise TransientError(
                SINK_CONFLICT,
                f"after landing {rel!r} the sink holds {found}; expected {file.size} bytes, "
                f"sha256 {file.sha256} (a concurrent writer?)",
            )

    async def sweep(self) -> int:
        leftovers = self._journal.leftovers()
        if not leftovers:
            return 0
        await self._ensure_filesystem()
        removed = 0
        for tmp in leftovers:
            removed += await self._call(f"delete {tmp!r}", self._delete_if_there, tmp)
        self._journal.clear()
        if removed:
            self._log.warning(
                "removed temporary files left by an interrupted put",
                extra={"sink": self.where, "files": removed},
            )
        return removed

    def _delete_if_there(self, tmp: str) -> int:
        """In a worker thread: 1 when ``tmp`` existed and is deleted now, else 0."""
        try:
            self._file(tmp).delete_file()
        except ResourceNotFoundError as exc:
            if error_code(exc) in FILESYSTEM_MISSING:
                raise
            return 0
        return 1

    async def walk(self) -> AsyncIterator[SinkItem]:
        await self._ensure_filesystem()
        for item in await self._call(f"list {self.where!r}", self._walk):
            yield item

    def _walk(self) -> list[SinkItem]:
        prefix = f"{self._base}/" if self._base else ""
        items: list[SinkItem] = []
        try:
            paths = list(self._fs.get_paths(path=self._base or None, recursive=True))
        except ResourceNotFoundError as exc:
            if error_code(exc) in FILESYSTEM_MISSING:
                raise
            return []  # nothing landed yet
        for entry in paths:
            if entry.is_directory or not entry.name.startswith(prefix):
                continue
            rel = entry.name[len(prefix) :]
            name = rel.rpartition("/")[2]
            items.append(SinkItem(rel, name.startswith(".") and TMP_MARK in name))
        return items

    async def _delete_quietly(self, tmp: str) -> bool:
        """Delete a temporary file; False (and remembered for later) when that fails."""

        def delete() -> None:
            with contextlib.suppress(ResourceNotFoundError):
                self._file(tmp).delete_file()

        self._orphans.add(tmp)  # until it is known to be gone
        try:
            await trio.to_thread.run_sync(delete, limiter=self._limiter, abandon_on_cancel=True)
        except Exception as exc:
            self._log.info(
                "could not delete a temporary file; will retry",
                extra={"path": tmp, "error": type(exc).__name__},
            )
            return False
        self._orphans.discard(tmp)
        self._journal.end(tmp)
        return True

    async def _delete_orphans(self) -> None:
        for tmp in list(self._orphans)[:ORPHANS_PER_PUT]:
            if not await self._delete_quietly(tmp):
                break

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        self._service.close()
        self._close_credential()

    def _close_credential(self) -> None:
        close = getattr(self._credential, "close", None)
        if close is not None:
            close()
