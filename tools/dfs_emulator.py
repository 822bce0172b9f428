"""A test emulator of ADLS Gen2 (the DFS endpoint, and the Blob calls its SDK makes), over HTTP.

Azurite has no DFS endpoint (every path operation of azure-storage-file-datalake fails there with
``UnsupportedRequestError``), so the ``onelake`` sink is tested against this instead. It is
checked with the real sync client, ``azure-storage-file-datalake`` 12.26, whose calls it serves on
one port in Azurite's path style: ``account_url="http://127.0.0.1:PORT/devstoreaccount1"`` (the
SDK takes the account from the path for 127.0.0.1 and localhost, and sends the Blob-endpoint
calls to the same URL because it has no ``.dfs.`` to turn into ``.blob.``).

Covered (the operation names are the keys of ``stats()["ops"]``):

- filesystems: ``create_filesystem`` (Blob ``PUT ?restype=container`` with ``x-ms-meta-*``, DFS
  ``PUT ?resource=filesystem``), ``get_filesystem_properties`` (Blob ``GET|HEAD
  ?restype=container``, DFS ``HEAD ?resource=filesystem``), ``set_filesystem_metadata``,
  ``delete_filesystem`` (both endpoints), ``list_filesystems`` (DFS ``GET /acct?resource=account``);
- ``list_paths``: ``GET /{fs}?resource=filesystem&recursive=&directory=&maxResults=&continuation=``
  (JSON, ``x-ms-continuation`` paging);
- ``create_file`` / ``create_directory``: ``PUT ?resource=file|directory`` with ``x-ms-properties``,
  ``x-ms-content-type`` and If-Match / If-None-Match (``*``: 409 ``PathAlreadyExists``); parent
  directories are created implicitly (hierarchical namespace); re-creating a file empties it;
- ``append``: ``PATCH ?action=append&position=N`` (``&flush=true`` too), Content-MD5 checked
  (400 ``Md5Mismatch``); appended bytes are staged on disk per path, at their position, until a
  flush — appends may arrive in any order, a repeated append at the same position is harmless;
- ``flush``: ``PATCH ?action=flush&position=N`` commits exactly the staged bytes up to N (they
  must be contiguous from the committed length, else 400 ``InvalidFlushPosition``), stores
  ``x-ms-content-md5`` / ``x-ms-content-type``, honours ``retainUncommittedData``;
- ``get_properties``: ``HEAD`` (Blob and DFS headers together: Content-Length, ETag,
  Last-Modified, ``x-ms-meta-*``, ``x-ms-properties``, ``x-ms-resource-type``,
  ``x-ms-creation-time``, Content-MD5; a directory carries ``x-ms-meta-hdi_isfolder: true``;
  ``action=getStatus|getAccessControl`` answer the same plus owner/group/permissions);
- ``read``: ``GET`` with ``Range`` / ``x-ms-range`` (206, ``Content-Range``; 416 ``InvalidRange``
  past the end, as the SDK expects for empty files), ``x-ms-range-get-content-md5``, If-Match;
- ``rename``: ``PUT`` with ``x-ms-rename-source: /{fs}/{path}[?sas]`` (``mode=legacy|posix``),
  files and whole directories, overwriting a destination file unless If-None-Match ``*``; 404
  ``SourcePathNotFound`` / ``RenameDestinationParentPathNotFound``;
- ``delete``: ``DELETE`` (``recursive=true`` for directories, else 409 ``DirectoryNotEmpty``);
- metadata: ``set_metadata`` (Blob ``PUT ?comp=metadata``), ``get_metadata`` (Blob ``GET
  ?comp=metadata``), ``set_properties`` (DFS ``PATCH ?action=setProperties``),
  ``set_http_headers`` (``PUT ?comp=properties``);
- Block Blob uploads, as azure-storage-blob 12.x makes them (the ``onelake`` sink's ``api =
  "blob"``): ``put_blob`` (``PUT`` with ``x-ms-blob-type: BlockBlob``, ``x-ms-meta-*``,
  Content-MD5 checked, If-None-Match ``*``: 409 ``BlobAlreadyExists``) — the whole file at
  once: the bytes go to a new blob file and one transaction points the path at it, so a reader
  never sees it half-written; ``put_block`` (``PUT ?comp=block&blockid=``, Content-MD5 checked;
  blocks are durable and invisible) and ``put_block_list`` (``PUT ?comp=blocklist`` with an XML
  ``<BlockList>`` of ``<Latest>`` / ``<Uncommitted>`` ids: the blocks in that order become the
  file at once, 400 ``InvalidBlockList`` for an unknown id; every staged block of the path is
  dropped). Parents are created as for ``create_file``; a directory in the way is 409
  ``PathConflict``;
- errors as the SDK parses them: the ``x-ms-error-code`` header plus a JSON body
  (``{"error": {"code", "message"}}``) on DFS calls or an XML ``<Error>`` on Blob calls.

Auth: every request must carry *some* credential — ``Authorization: SharedKey <account>:<sig>``
(the account must match the URL's), ``Authorization: Bearer <token>``, or a SAS query string
(``sig=``) — or it is refused with 401 ``NoAuthenticationInformation``. Signatures, tokens and SAS
permissions are **not verified**: this tests that a client wires a credential, not that the
credential is valid (``--allow-anonymous`` turns the check off).

Fault injection, from Python (the :class:`DfsEmulator` object) or over HTTP (so a daemon in a
subprocess can be faulted from the test process; :class:`RemoteControl` wraps it):

- ``fail_next(n, status=503, retry_after=None, ops=None, code=None)``: the next n requests (of
  those operations) fail with that status, ``Retry-After`` and error code;
- ``storm(status, seconds, retry_after=None, ops=None)``: every request fails for a while;
- ``latency(seconds)``: every request waits that long first;
- ``drop_connections(n, ops=None, after=False)``: the next n requests get no response, the socket
  is closed (``after=True``: the request is carried out first, then the response is lost);
- ``reset()``: no more faults; ``stats()`` / ``reset_stats()``: requests per operation (arrived,
  and answered 2xx), statuses, faults injected, appended bytes, the largest append and block,
  and how many request bodies carried a Content-MD5 that was checked (``md5_checked``).

HTTP control (not faulted, no auth): ``POST /_emulator/faults`` with JSON such as
``{"storm": {"status": 503, "seconds": 5, "retry_after": 1}}`` (keys ``fail_next``, ``storm``,
``latency``, ``drop_connections``, ``reset``), ``GET /_emulator/faults``, ``GET /_emulator/stats``,
``POST /_emulator/stats/reset``, ``GET /_emulator/files?account=&filesystem=&sha256=1``.

Durable: state lives in ``--root``: ``state.sqlite`` (filesystems, paths, metadata, etags, staged
ranges), committed bytes in ``blobs/<id>`` (immutable; a flush or rename swaps ids, so a reader
never sees a half-written file), uncommitted appends in ``staging/<id>``. A restarted emulator
serves what was flushed, and keeps what was appended but not yet flushed.

Not covered: signature/token/SAS verification, ACLs and permissions (``setAccessControl`` is
accepted and ignored; owner/group/permissions are fixed), leases (lease headers are ignored),
customer-provided keys, encryption context, expiry, snapshots/versions/soft delete, the Blob
list/page/append-blob APIs (``list_blobs``...), ``Committed`` entries in a block list and Get
Block List (no committed block lists are kept), the expiry of uncommitted blocks, Put Blob from
URL, access tiers, Blob ``comp=list`` of containers, tags, query acceleration, ``If-Modified-
Since``/``If-Unmodified-Since`` and the ``x-ms-source-if-*`` rename conditions, paginated
recursive delete, secondary endpoints, HTTPS (so the SDK refuses token credentials against it:
"Token credential is only supported with HTTPS"). Hierarchical-namespace edge cases it resolves
its own way: a rename onto an existing directory is 409 ``PathConflict`` (no move *into* the
directory in posix mode); appends are staged wherever they point and only the flush checks
positions; a flush with If-None-Match ``*`` onto an existing file is 409 ``PathAlreadyExists``;
names are not validated as strictly as the service does (any filesystem name is accepted, e.g. a
OneLake workspace ``My Workspace``); metadata values outside Latin-1 are sent as raw UTF-8 bytes
in ``x-ms-meta-*``.

Which endpoint the SDK (12.26) uses, seen by running it against this emulator: the Blob API for
``create_file_system`` / ``exists`` / ``get_file_system_properties`` / ``delete_file_system``
(``?restype=container``), ``get_file_properties`` (HEAD), ``download_file`` (GET with
``x-ms-range``, retried without a range after a 416 on an empty file) and ``set_metadata``
(``?comp=metadata``); the DFS API for ``create_file`` / ``create_directory``, ``append_data``,
``flush_data``, ``rename_file`` (``mode=legacy``), ``delete_file`` / ``delete_directory`` and
``get_paths``. azure-storage-blob's ``upload_blob`` is one Put Blob up to
``max_single_put_size`` and Put Block + Put Block List above; ``stage_block`` and
``commit_block_list`` are those two calls. ``upload_data(overwrite=False)`` appends to a path
it never created and flushes with If-None-Match ``*``, so an append to a missing path creates a
*pending* file here, invisible until flushed.

Standard library only: ``python tools/dfs_emulator.py --port 10004 --root var/dfs``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.etree import ElementTree

DEFAULT_ACCOUNT = "devstoreaccount1"
API_VERSION = "2025-01-05"
COPY_CHUNK = 1024 * 1024
SPOOL_IN_MEMORY = 16 * 1024 * 1024
"""Request bodies larger than this are spooled to disk before they are applied."""
LIST_MAX_RESULTS = 5000
FILETIME_EPOCH = 116444736000000000
"""1970-01-01 as a Windows FILETIME (100 ns since 1601), the format of ``creationTime``."""

_FAULT_CODES = {
    401: "InvalidAuthenticationInfo",
    403: "AuthorizationFailure",
    408: "OperationTimedOut",
    409: "EmulatorFault",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServerBusy",
    504: "GatewayTimeout",
}


class StoreError(Exception):
    """An operation failed the way the service would fail it: status, error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _now() -> float:
    return time.time()


def _new_etag() -> str:
    return f'"0x8D{uuid.uuid4().hex[:13].upper()}"'


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _filetime(ts: float) -> str:
    return str(int(ts * 10_000_000) + FILETIME_EPOCH)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _under(path: str, prefix: str) -> bool:
    return path.startswith(prefix + "/")


def parse_properties(header: str | None) -> dict[str, str]:
    """``x-ms-properties`` (``n1=base64(v1),n2=base64(v2)``) as a dict."""
    out: dict[str, str] = {}
    if not header:
        return out
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name:
            raise StoreError(400, "InvalidHeaderValue", f"bad x-ms-properties item {item!r}")
        try:
            out[name] = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(
                400, "InvalidHeaderValue", f"bad x-ms-properties value: {exc}"
            ) from exc
    return out


def format_properties(metadata: dict[str, str]) -> str:
    return ",".join(f"{k}={base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())


def _merge_ranges(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted([*ranges, [start, end]]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


# --- the store ----------------------------------------------------------------------------------


class Store:
    """Filesystems and paths of every account, in one SQLite file plus immutable blob files.

    One lock serialises changes (an emulator needs correctness more than parallel writes);
    request bodies are read off the socket before the lock is taken.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs", "staging", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(
            root / "state.sqlite", check_same_thread=False, isolation_level=None
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS filesystems (
                account TEXT, name TEXT, etag TEXT, created REAL, modified REAL, metadata TEXT,
                PRIMARY KEY (account, name));
            CREATE TABLE IF NOT EXISTS paths (
                account TEXT, fs TEXT, path TEXT, kind TEXT, etag TEXT, created REAL,
                modified REAL, length INTEGER, metadata TEXT, content_type TEXT,
                content_md5 TEXT, blob TEXT, staging TEXT, staged TEXT, pending INTEGER,
                PRIMARY KEY (account, fs, path));
            CREATE TABLE IF NOT EXISTS blocks (
                account TEXT, fs TEXT, path TEXT, block_id TEXT, staging TEXT, length INTEGER,
                PRIMARY KEY (account, fs, path, block_id));
            """
        )

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def blob_path(self, blob: str) -> Path:
        return self.root / "blobs" / blob

    def staging_path(self, staging: str) -> Path:
        return self.root / "staging" / staging

    # -- filesystems ---------------------------------------------------------------------------

    def filesystem(self, account: str, fs: str) -> sqlite3.Row | None:
        with self.lock:
            row: sqlite3.Row | None = self.db.execute(
                "SELECT * FROM filesystems WHERE account=? AND name=?", (account, fs)
            ).fetchone()
            return row

    def require_filesystem(self, account: str, fs: str, *, blob: bool = False) -> sqlite3.Row:
        row = self.filesystem(account, fs)
        if row is None:
            if blob:
                raise StoreError(
                    404, "ContainerNotFound", "The specified container does not exist."
                )
            raise StoreError(404, "FilesystemNotFound", "The specified filesystem does not exist.")
        return row

    def create_filesystem(
        self, account: str, fs: str, metadata: dict[str, str], *, blob: bool
    ) -> sqlite3.Row:
        with self._tx() as db:
            if self.filesystem(account, fs) is not None:
                if blob:
                    raise StoreError(
                        409, "ContainerAlreadyExists", "The specified container already exists."
                    )
                raise StoreError(
                    409, "FilesystemAlreadyExists", "The specified filesystem already exists."
                )
            now = _now()
            db.execute(
                "INSERT INTO filesystems VALUES (?,?,?,?,?,?)",
                (account, fs, _new_etag(), now, now, json.dumps(metadata)),
            )
        return self.require_filesystem(account, fs)

    def set_filesystem_metadata(
        self, account: str, fs: str, metadata: dict[str, str], *, blob: bool
    ) -> sqlite3.Row:
        with self._tx() as db:
            self.require_filesystem(account, fs, blob=blob)
            db.execute(
                "UPDATE filesystems SET metadata=?, etag=?, modified=? WHERE account=? AND name=?",
                (json.dumps(metadata), _new_etag(), _now(), account, fs),
            )
        return self.require_filesystem(account, fs)

    def delete_filesystem(self, account: str, fs: str, *, blob: bool) -> None:
        with self._tx() as db:
            self.require_filesystem(account, fs, blob=blob)
            rows = db.execute(
                "SELECT blob, staging FROM paths WHERE account=? AND fs=?", (account, fs)
            ).fetchall()
            db.execute("DELETE FROM paths WHERE account=? AND fs=?", (account, fs))
            db.execute("DELETE FROM filesystems WHERE account=? AND name=?", (account, fs))
        for row in rows:
            self._discard(row["blob"], row["staging"])

    def list_filesystems(self, account: str) -> list[sqlite3.Row]:
        with self.lock:
            return list(
                self.db.execute(
                    "SELECT * FROM filesystems WHERE account=? ORDER BY name", (account,)
                )
            )

    # -- paths ---------------------------------------------------------------------------------

    def get(self, account: str, fs: str, path: str, *, pending: bool = False) -> sqlite3.Row | None:
        """The path's row; with ``pending``, also a file that exists only as appended data."""
        with self.lock:
            row: sqlite3.Row | None = self.db.execute(
                "SELECT * FROM paths WHERE account=? AND fs=? AND path=? AND (pending=0 OR ?)",
                (account, fs, path, pending),
            ).fetchone()
            return row

    def require(self, account: str, fs: str, path: str, *, blob: bool = False) -> sqlite3.Row:
        self.require_filesystem(account, fs, blob=blob)
        row = self.get(account, fs, path)
        if row is None:
            if blob:
                raise StoreError(404, "BlobNotFound", "The specified blob does not exist.")
            raise StoreError(404, "PathNotFound", "The specified path does not exist.")
        return row

    def _discard(self, blob: str | None, staging: str | None) -> None:
        if blob:
            self.blob_path(blob).unlink(missing_ok=True)
        if staging:
            self.staging_path(staging).unlink(missing_ok=True)

    def _children(self, db: sqlite3.Connection, account: str, fs: str, path: str) -> list[Any]:
        prefix = path + "/"
        return list(
            db.execute(
                "SELECT * FROM paths WHERE account=? AND fs=? AND substr(path, 1, ?) = ?",
                (account, fs, len(prefix), prefix),
            )
        )

    def _ensure_parents(self, db: sqlite3.Connection, account: str, fs: str, path: str) -> None:
        now = _now()
        for ancestor in _ancestors(path):
            row = db.execute(
                "SELECT kind FROM paths WHERE account=? AND fs=? AND path=?",
                (account, fs, ancestor),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO paths VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
                    (account, fs, ancestor, "directory", _new_etag(), now, now, 0, "{}", None,
                     None, None, None, "[]"),
                )  # fmt: skip
            elif row["kind"] != "directory":
                raise StoreError(409, "PathConflict", f"{ancestor!r} is a file, not a directory.")

    def create(
        self,
        account: str,
        fs: str,
        path: str,
        kind: str,
        *,
        metadata: dict[str, str],
        content_type: str | None,
        if_match: str | None,
        if_none_match: str | None,
    ) -> sqlite3.Row:
        with self._tx() as db:
            self.require_filesystem(account, fs)
            replaced = self.get(account, fs, path, pending=True)
            existing = self.get(account, fs, path)
            if existing is not None:
                if if_none_match == "*":
                    raise StoreError(409, "PathAlreadyExists", "The specified path already exists.")
                if if_none_match and if_none_match == existing["etag"]:
                    raise StoreError(412, "ConditionNotMet", "If-None-Match matched.")
                if existing["kind"] != kind:
                    raise StoreError(
                        409, "PathConflict", f"the path exists as a {existing['kind']}."
                    )
            if if_match and (existing is None or if_match not in ("*", existing["etag"])):
                raise StoreError(412, "ConditionNotMet", "If-Match did not match.")
            self._ensure_parents(db, account, fs, path)
            now = _now()
            created = existing["created"] if existing is not None else now
            db.execute(
                "INSERT OR REPLACE INTO paths VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
                (account, fs, path, kind, _new_etag(), created, now, 0, json.dumps(metadata),
                 content_type, None, None, None, "[]"),
            )  # fmt: skip
        if replaced is not None and kind == "file":
            self._discard(replaced["blob"], replaced["staging"])
        return self.require(account, fs, path)

    def append(self, account: str, fs: str, path: str, position: int, body: IO[bytes]) -> int:
        """Stage ``body`` at ``position``; returns its length.

        Appending to a path that does not exist creates a *pending* file, invisible until a
        flush (the SDK's ``upload_data(overwrite=False)`` relies on this, with If-None-Match
        ``*`` on the flush).
        """
        body.seek(0, os.SEEK_END)
        length = body.tell()
        body.seek(0)
        with self._tx() as db:
            self.require_filesystem(account, fs)
            row = self.get(account, fs, path, pending=True)
            if row is None:
                self._ensure_parents(db, account, fs, path)
                now = _now()
                db.execute(
                    "INSERT INTO paths VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
                    (account, fs, path, "file", _new_etag(), now, now, 0, "{}", None, None,
                     None, None, "[]"),
                )  # fmt: skip
                row = self.get(account, fs, path, pending=True)
                assert row is not None
            if row["kind"] != "file":
                raise StoreError(400, "InvalidResourceName", "cannot append to a directory.")
            staging = row["staging"] or uuid.uuid4().hex
            fd = os.open(self.staging_path(staging), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                offset = position
                while chunk := body.read(COPY_CHUNK):
                    os.pwrite(fd, chunk, offset)
                    offset += len(chunk)
            finally:
                os.close(fd)
            staged = json.loads(row["staged"])
            if length:
                staged = _merge_ranges(staged, position, position + length)
            db.execute(
                "UPDATE paths SET staging=?, staged=? WHERE account=? AND fs=? AND path=?",
                (staging, json.dumps(staged), account, fs, path),
            )
        return length

    def flush(
        self,
        account: str,
        fs: str,
        path: str,
        position: int,
        *,
        retain: bool,
        content_md5: str | None,
        content_type: str | None,
        if_match: str | None,
        if_none_match: str | None = None,
    ) -> sqlite3.Row:
        with self._tx() as db:
            self.require_filesystem(account, fs)
            row = self.get(account, fs, path, pending=True)
            if row is None:
                raise StoreError(404, "PathNotFound", "The specified path does not exist.")
            if row["kind"] != "file":
                raise StoreError(400, "InvalidResourceName", "cannot flush a directory.")
            visible = not row["pending"]
            if if_match and (not visible or if_match not in ("*", row["etag"])):
                raise StoreError(412, "ConditionNotMet", "If-Match did not match.")
            if if_none_match and visible and if_none_match in ("*", row["etag"]):
                raise StoreError(409, "PathAlreadyExists", "The specified path already exists.")
            committed: int = row["length"]
            staged: list[list[int]] = json.loads(row["staged"])
            if position < committed or (
                position > committed
                and not any(a <= committed and b >= position for a, b in staged)
            ):
                raise StoreError(
                    400,
                    "InvalidFlushPosition",
                    f"the uploaded data is not contiguous or the position {position} is not "
                    f"equal to the length of the file after appending the uploaded data "
                    f"(committed {committed}, staged {staged}).",
                )
            blob, staging = row["blob"], row["staging"]
            new_blob = blob
            old_blob_to_delete = None
            if position > committed:
                assert staging is not None
                new_blob = uuid.uuid4().hex
                self._assemble(blob, staging, committed, position, new_blob)
                old_blob_to_delete = blob
            elif blob is None:
                new_blob = uuid.uuid4().hex
                self.blob_path(new_blob).touch()
            remaining = [[max(a, position), b] for a, b in staged if b > position] if retain else []
            if not remaining and staging is not None:
                self.staging_path(staging).unlink(missing_ok=True)
                staging = None
            db.execute(
                "UPDATE paths SET blob=?, length=?, staging=?, staged=?, etag=?, modified=?,"
                " content_md5=?, content_type=COALESCE(?, content_type), pending=0"
                " WHERE account=? AND fs=? AND path=?",
                (new_blob, position, staging, json.dumps(remaining), _new_etag(), _now(),
                 content_md5, content_type, account, fs, path),
            )  # fmt: skip
        if old_blob_to_delete:
            self.blob_path(old_blob_to_delete).unlink(missing_ok=True)
        return self.require(account, fs, path)

    def _assemble(
        self, blob: str | None, staging: str, committed: int, position: int, new_blob: str
    ) -> None:
        """Write committed bytes [0, committed) + staged bytes [committed, position) to new_blob."""
        target = self.blob_path(new_blob)
        tmp = self.root / "tmp" / f"{new_blob}.part"
        with tmp.open("wb") as out:
            if blob is not None and committed:
                with self.blob_path(blob).open("rb") as old:
                    shutil.copyfileobj(old, out, COPY_CHUNK)
            with self.staging_path(staging).open("rb") as src:
                src.seek(committed)
                left = position - committed
                while left:
                    chunk = src.read(min(COPY_CHUNK, left))
                    if not chunk:  # a hole inside a staged range cannot happen; be safe
                        raise StoreError(500, "InternalError", "staged data shorter than recorded")
                    out.write(chunk)
                    left -= len(chunk)
        os.replace(tmp, target)

    def put_blob(
        self, account: str, fs: str, path: str, body: IO[bytes], metadata: dict[str, str],
        content_type: str | None, *, content_md5: str | None = None,
        if_none_match: str | None = None,
    ) -> sqlite3.Row:  # fmt: skip
        """Put Blob: the whole file in one request, visible all at once (the bytes go to a new
        immutable blob file first, then one transaction points the path at it)."""
        new_blob = uuid.uuid4().hex
        tmp = self.root / "tmp" / f"{new_blob}.part"
        with tmp.open("wb") as out:
            shutil.copyfileobj(body, out, COPY_CHUNK)
            length = out.tell()
        os.replace(tmp, self.blob_path(new_blob))
        return self._commit_blob(
            account, fs, path, new_blob, length, metadata, content_type, content_md5,
            if_none_match,
        )  # fmt: skip

    def _commit_blob(
        self, account: str, fs: str, path: str, new_blob: str, length: int,
        metadata: dict[str, str], content_type: str | None, content_md5: str | None,
        if_none_match: str | None,
    ) -> sqlite3.Row:  # fmt: skip
        """Point ``path`` at the complete blob file ``new_blob``, in one transaction, replacing
        a file (and its staged appends and blocks); parents are created (hierarchical
        namespace). The blob file is deleted again when the path cannot take it."""
        replaced = None
        blocks: list[sqlite3.Row] = []
        try:
            with self._tx() as db:
                self.require_filesystem(account, fs, blob=True)
                replaced = self.get(account, fs, path, pending=True)
                existing = self.get(account, fs, path)
                if existing is not None:
                    if existing["kind"] == "directory":
                        raise StoreError(409, "PathConflict", "the path exists as a directory.")
                    if if_none_match == "*":
                        raise StoreError(
                            409, "BlobAlreadyExists", "The specified blob already exists."
                        )
                self._ensure_parents(db, account, fs, path)
                now = _now()
                created = existing["created"] if existing is not None else now
                blocks = list(
                    db.execute(
                        "SELECT staging FROM blocks WHERE account=? AND fs=? AND path=?",
                        (account, fs, path),
                    )
                )
                db.execute(
                    "DELETE FROM blocks WHERE account=? AND fs=? AND path=?", (account, fs, path)
                )
                db.execute(
                    "INSERT OR REPLACE INTO paths VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
                    (account, fs, path, "file", _new_etag(), created, now, length,
                     json.dumps(metadata), content_type, content_md5, new_blob, None, "[]"),
                )  # fmt: skip
        except BaseException:
            self.blob_path(new_blob).unlink(missing_ok=True)
            raise
        if replaced is not None:
            self._discard(replaced["blob"], replaced["staging"])
        for block in blocks:
            self.staging_path(block["staging"]).unlink(missing_ok=True)
        return self.require(account, fs, path)

    def put_block(self, account: str, fs: str, path: str, block_id: str, body: IO[bytes]) -> int:
        """Put Block: stage a block for a later Put Block List; invisible until then."""
        staging = uuid.uuid4().hex
        with self.staging_path(staging).open("wb") as out:
            shutil.copyfileobj(body, out, COPY_CHUNK)
            length = out.tell()
        old = None
        try:
            with self._tx() as db:
                self.require_filesystem(account, fs, blob=True)
                existing = self.get(account, fs, path)
                if existing is not None and existing["kind"] == "directory":
                    raise StoreError(409, "PathConflict", "the path exists as a directory.")
                old = db.execute(
                    "SELECT staging FROM blocks WHERE account=? AND fs=? AND path=? AND block_id=?",
                    (account, fs, path, block_id),
                ).fetchone()
                db.execute(
                    "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?)",
                    (account, fs, path, block_id, staging, length),
                )
        except BaseException:
            self.staging_path(staging).unlink(missing_ok=True)
            raise
        if old is not None:
            self.staging_path(old["staging"]).unlink(missing_ok=True)
        return length

    def put_block_list(
        self, account: str, fs: str, path: str, block_ids: list[str], metadata: dict[str, str],
        content_type: str | None, *, if_none_match: str | None = None,
    ) -> sqlite3.Row:  # fmt: skip
        """Put Block List: the staged blocks, in this order, become the file at once."""
        with self.lock:
            staged = {
                r["block_id"]: r["staging"]
                for r in self.db.execute(
                    "SELECT block_id, staging FROM blocks WHERE account=? AND fs=? AND path=?",
                    (account, fs, path),
                )
            }
        missing = [b for b in block_ids if b not in staged]
        if missing:
            raise StoreError(
                400, "InvalidBlockList", f"the block list names {len(missing)} unknown blocks."
            )
        new_blob = uuid.uuid4().hex
        tmp = self.root / "tmp" / f"{new_blob}.part"
        with tmp.open("wb") as out:
            for block_id in block_ids:
                with self.staging_path(staged[block_id]).open("rb") as src:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
            length = out.tell()
        os.replace(tmp, self.blob_path(new_blob))
        return self._commit_blob(
            account, fs, path, new_blob, length, metadata, content_type, None, if_none_match
        )

    def set_metadata(
        self, account: str, fs: str, path: str, metadata: dict[str, str], *, blob: bool
    ) -> sqlite3.Row:
        with self._tx() as db:
            self.require(account, fs, path, blob=blob)
            metadata = {k: v for k, v in metadata.items() if k.lower() != "hdi_isfolder"}
            db.execute(
                "UPDATE paths SET metadata=?, etag=?, modified=?"
                " WHERE account=? AND fs=? AND path=?",
                (json.dumps(metadata), _new_etag(), _now(), account, fs, path),
            )
        return self.require(account, fs, path)

    def set_content_type(self, account: str, fs: str, path: str, content_type: str | None) -> None:
        with self._tx() as db:
            self.require(account, fs, path, blob=True)
            db.execute(
                "UPDATE paths SET content_type=?, etag=? WHERE account=? AND fs=? AND path=?",
                (content_type, _new_etag(), account, fs, path),
            )

    def rename(
        self,
        account: str,
        src_fs: str,
        src: str,
        dst_fs: str,
        dst: str,
        *,
        if_none_match: str | None,
        if_match: str | None,
    ) -> sqlite3.Row:
        discard: list[tuple[str | None, str | None]] = []
        with self._tx() as db:
            self.require_filesystem(account, src_fs)
            self.require_filesystem(account, dst_fs)
            source = self.get(account, src_fs, src)
            if source is None:
                raise StoreError(404, "SourcePathNotFound", "The source path does not exist.")
            if (src_fs, src) == (dst_fs, dst):
                return source
            if src_fs == dst_fs and _under(dst, src):
                raise StoreError(
                    400, "InvalidDestinationPath", "cannot move a directory into itself."
                )
            parent = _parent(dst)
            if parent:
                held = self.get(account, dst_fs, parent)
                if held is None or held["kind"] != "directory":
                    raise StoreError(
                        404,
                        "RenameDestinationParentPathNotFound",
                        "The parent directory of the destination path does not exist.",
                    )
            target = self.get(account, dst_fs, dst)
            if if_match and (target is None or if_match not in ("*", target["etag"])):
                raise StoreError(412, "ConditionNotMet", "If-Match did not match.")
            if target is not None:
                if if_none_match == "*":
                    raise StoreError(409, "PathAlreadyExists", "The specified path already exists.")
                if target["kind"] == "directory" or source["kind"] == "directory":
                    raise StoreError(
                        409, "PathConflict", "the destination exists and is not a file."
                    )
                discard.append((target["blob"], target["staging"]))
                db.execute(
                    "DELETE FROM paths WHERE account=? AND fs=? AND path=?",
                    (account, dst_fs, dst),
                )
            moving = [source]
            if source["kind"] == "directory":
                moving += self._children(db, account, src_fs, src)
            for row in moving:
                new = dst + row["path"][len(src) :]
                db.execute(
                    "UPDATE paths SET fs=?, path=?, modified=? WHERE account=? AND fs=? AND path=?",
                    (dst_fs, new, _now(), account, src_fs, row["path"]),
                )
        for blob, staging in discard:
            self._discard(blob, staging)
        return self.require(account, dst_fs, dst)

    def delete(
        self, account: str, fs: str, path: str, *, recursive: bool, if_match: str | None,
        blob: bool,
    ) -> None:  # fmt: skip
        with self._tx() as db:
            row = self.require(account, fs, path, blob=blob)
            if if_match and if_match not in ("*", row["etag"]):
                raise StoreError(412, "ConditionNotMet", "If-Match did not match.")
            doomed = [row]
            if row["kind"] == "directory":
                children = self._children(db, account, fs, path)
                if children and not recursive:
                    raise StoreError(409, "DirectoryNotEmpty", "The directory is not empty.")
                doomed += children
            for r in doomed:
                db.execute(
                    "DELETE FROM paths WHERE account=? AND fs=? AND path=?",
                    (account, fs, r["path"]),
                )
        for r in doomed:
            self._discard(r["blob"], r["staging"])

    def list_paths(
        self, account: str, fs: str, directory: str, *, recursive: bool, after: str,
        limit: int,
    ) -> tuple[list[sqlite3.Row], str | None]:  # fmt: skip
        """Paths under ``directory`` in name order, after ``after``; and the next page's key."""
        self.require_filesystem(account, fs)
        if directory:
            held = self.get(account, fs, directory)
            if held is None:
                raise StoreError(404, "PathNotFound", "The specified path does not exist.")
        with self.lock:
            rows = list(
                self.db.execute(
                    "SELECT * FROM paths WHERE account=? AND fs=? AND path > ? AND pending=0"
                    " ORDER BY path",
                    (account, fs, after),
                )
            )
        out: list[sqlite3.Row] = []
        for row in rows:
            path = row["path"]
            if directory and not _under(path, directory):
                continue
            rest = path[len(directory) + 1 :] if directory else path
            if not recursive and "/" in rest:
                continue
            if len(out) == limit:
                return out, out[-1]["path"]
            out.append(row)
        return out, None

    def open_blob(self, row: sqlite3.Row) -> IO[bytes] | None:
        """An open handle on a file's committed bytes (stays valid if the file is replaced)."""
        if row["blob"] is None:
            return None
        with self.lock:
            try:
                return self.blob_path(row["blob"]).open("rb")
            except FileNotFoundError:
                return None

    # -- for tests -----------------------------------------------------------------------------

    def files(self, account: str, fs: str) -> dict[str, sqlite3.Row]:
        with self.lock:
            return {
                row["path"]: row
                for row in self.db.execute(
                    "SELECT * FROM paths WHERE account=? AND fs=? AND kind='file' AND pending=0"
                    " ORDER BY path",
                    (account, fs),
                )
            }

    def read_bytes(self, account: str, fs: str, path: str) -> bytes:
        row = self.require(account, fs, path)
        fh = self.open_blob(row)
        if fh is None:
            return b""
        with fh:
            return fh.read()

    def sha256(self, row: sqlite3.Row) -> str:
        h = hashlib.sha256()
        fh = self.open_blob(row)
        if fh is not None:
            with fh:
                while chunk := fh.read(COPY_CHUNK):
                    h.update(chunk)
        return h.hexdigest()


# --- faults and counters ------------------------------------------------------------------------


class Faults:
    """What goes wrong, and when; shared by every handler thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.failures: list[dict[str, Any]] = []
            self.storm_until = 0.0
            self.storm_spec: dict[str, Any] = {}
            self.delay = 0.0
            self.drops: list[dict[str, Any]] = []

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | None = None,
        ops: list[str] | None = None,
        code: str | None = None,
    ) -> None:
        spec = {"status": status, "retry_after": retry_after, "ops": ops, "code": code}
        with self.lock:
            self.failures += [dict(spec) for _ in range(n)]

    def storm(
        self,
        status: int = 503,
        seconds: float = 5.0,
        retry_after: float | None = None,
        ops: list[str] | None = None,
        code: str | None = None,
    ) -> None:
        with self.lock:
            self.storm_until = time.monotonic() + seconds
            self.storm_spec = {
                "status": status,
                "retry_after": retry_after,
                "ops": ops,
                "code": code,
            }

    def latency(self, seconds: float) -> None:
        with self.lock:
            self.delay = seconds

    def drop_connections(self, n: int, ops: list[str] | None = None, after: bool = False) -> None:
        with self.lock:
            self.drops += [{"ops": ops, "after": after} for _ in range(n)]

    def state(self) -> dict[str, Any]:
        with self.lock:
            left = max(0.0, self.storm_until - time.monotonic())
            return {
                "fail_next": list(self.failures),
                "storm": {**self.storm_spec, "seconds_left": round(left, 3)} if left else None,
                "latency": self.delay,
                "drop_connections": list(self.drops),
            }

    def pick(self, op: str) -> tuple[float, dict[str, Any] | None, dict[str, Any] | None]:
        """For one request: the delay, a drop (or None), a failure (or None)."""

        def matches(spec: dict[str, Any]) -> bool:
            return not spec.get("ops") or op in spec["ops"]

        with self.lock:
            drop = next((d for d in self.drops if matches(d)), None)
            if drop is not None:
                self.drops.remove(drop)
                return self.delay, drop, None
            if time.monotonic() < self.storm_until and matches(self.storm_spec):
                return self.delay, None, self.storm_spec
            failure = next((f for f in self.failures if matches(f)), None)
            if failure is not None:
                self.failures.remove(failure)
            return self.delay, None, failure


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.ops: Counter[str] = Counter()
            self.ok: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.appended_bytes = 0
            self.max_append_bytes = 0
            self.max_block_bytes = 0
            self.md5_checked = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ops": dict(self.ops),
                "ok": dict(self.ok),
                "statuses": dict(self.statuses),
                "faults": dict(self.faults),
                "appended_bytes": self.appended_bytes,
                "max_append_bytes": self.max_append_bytes,
                "max_block_bytes": self.max_block_bytes,
                "md5_checked": self.md5_checked,
                "requests": sum(self.ops.values()),
            }


# --- HTTP ---------------------------------------------------------------------------------------


def classify(method: str, fs: str, path: str, q: dict[str, str], headers: Any) -> str:
    """The operation a request asks for (the name used in stats and fault filters)."""
    comp, resource, action = q.get("comp"), q.get("resource"), q.get("action")
    if not fs:
        return "list_filesystems" if method == "GET" else "unsupported"
    if not path:
        if method == "PUT":
            return "set_filesystem_metadata" if comp == "metadata" else "create_filesystem"
        if method == "PATCH":
            return "set_filesystem_metadata"
        if method in ("GET", "HEAD"):
            if method == "GET" and resource == "filesystem":
                return "list_paths"
            if comp in (None, "metadata") and (q.get("restype") == "container" or resource):
                return "get_filesystem_properties"
            return "unsupported"
        if method == "DELETE":
            return "delete_filesystem"
        return "unsupported"
    if method == "PUT":
        if headers.get("x-ms-rename-source"):
            return "rename"
        if resource in ("file", "directory"):
            return f"create_{resource}"
        if comp == "metadata":
            return "set_metadata"
        if comp == "properties":
            return "set_http_headers"
        if comp is None and headers.get("x-ms-blob-type", "").lower() == "blockblob":
            return "put_blob"
        if comp == "block":
            return "put_block"
        if comp == "blocklist":
            return "put_block_list"
        return "unsupported"
    if method == "PATCH":
        return {
            "append": "append",
            "flush": "flush",
            "setProperties": "set_properties",
            "setAccessControl": "set_access_control",
        }.get(action or "", "unsupported")
    if method == "HEAD":
        return "get_properties"
    if method == "GET":
        if comp == "metadata":
            return "get_metadata"
        return "read" if comp is None else "unsupported"
    if method == "DELETE":
        return "delete"
    return "unsupported"


def _block_list(body: bytes) -> list[str]:
    """The block ids of a Put Block List body, in order (``Latest`` and ``Uncommitted``: this
    emulator keeps no committed block lists, so ``Committed`` is refused)."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise StoreError(400, "InvalidXmlDocument", f"bad block list: {exc}") from exc
    ids: list[str] = []
    for element in root:
        if element.tag not in ("Latest", "Uncommitted"):
            raise StoreError(
                400, "InvalidBlockList", f"<{element.tag}> blocks are not supported here."
            )
        ids.append(element.text or "")
    return ids


def _is_dfs_call(method: str, q: dict[str, str], headers: Any) -> bool:
    if "comp" in q or "restype" in q:
        return False
    return (
        method == "PATCH"
        or any(k in q for k in ("resource", "action", "recursive", "mode"))
        or bool(headers.get("x-ms-rename-source"))
    )


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: DfsEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, dropped connection) or a request still running while
        # the emulator stops is not an emulator error; anything else is printed.
        if isinstance(sys.exc_info()[1], ConnectionError) or self.emulator.stopped:
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "dfs-emulator/1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_PATCH = do_DELETE = do_HEAD = do_POST = do_GET

    # -- plumbing ------------------------------------------------------------------------------

    def _read_body(self) -> IO[bytes]:
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_IN_MEMORY, dir=str(self.server.emulator.store.root / "tmp")
        )
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(COPY_CHUNK, left))
                    if not chunk:
                        raise ConnectionError("client went away mid-body")
                    spool.write(chunk)
                    left -= len(chunk)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                chunk = self.rfile.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise ConnectionError("client went away mid-body")
                spool.write(chunk)
                left -= len(chunk)
        spool.seek(0)
        return spool

    def _base_headers(self) -> dict[str, str]:
        return {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-version": self.headers.get("x-ms-version") or API_VERSION,
            "Date": _http_date(_now()),
        }

    def _send(
        self,
        status: int,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        stream: IO[bytes] | None = None,
        length: int | None = None,
    ) -> None:
        self._status = status
        if self._op is not None:  # counted before the client can see the answer
            stats = self.server.emulator.stats_
            with stats.lock:
                stats.statuses[str(status)] += 1
                if 200 <= status < 300:
                    stats.ok[self._op] += 1
        if self._drop_response:
            self.close_connection = True
            if stream is not None:
                stream.close()
            return
        all_headers = {**self._base_headers(), **(headers or {})}
        if "Content-Length" not in all_headers:
            all_headers["Content-Length"] = str(length if stream is not None else len(body))
        self.send_response(status)
        for name, value in all_headers.items():
            # Header values go out as Latin-1; send UTF-8 metadata as its raw bytes.
            value = value.encode("utf-8").decode("latin-1")
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            if stream is not None:
                stream.close()
            return
        if stream is not None:
            with stream:
                left = length or 0
                while left:
                    chunk = stream.read(min(COPY_CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
        elif body:
            self.wfile.write(body)

    def _error(
        self, status: int, code: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"x-ms-error-code": code, **(extra or {})}
        text = f"{message}\nRequestId:{uuid.uuid4()}\nTime:{_http_date(_now())}"
        if self.command == "HEAD":
            self._send(status, {**headers, "Content-Length": "0"})
            return
        if self._dfs:
            body = json.dumps({"error": {"code": code, "message": text}}).encode()
            headers["Content-Type"] = "application/json;charset=utf-8"
        else:
            esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            body = (
                '<?xml version="1.0" encoding="utf-8"?>'
                f"<Error><Code>{code}</Code><Message>{esc}</Message></Error>"
            ).encode()
            headers["Content-Type"] = "application/xml"
        self._send(status, headers, body)

    def _handle(self) -> None:
        self._drop_response = False
        self._status = 0
        self._dfs = False
        self._op: str | None = None
        emulator = self.server.emulator
        split = urlsplit(self.path)
        if split.path.startswith("/_emulator/") or split.path == "/_emulator":
            self._control(split.path, dict(parse_qsl(split.query, keep_blank_values=True)))
            return
        q = {k.lower() if k.lower() != "retainuncommitteddata" else "retain": v
             for k, v in parse_qsl(split.query, keep_blank_values=True)}  # fmt: skip
        segments = split.path.lstrip("/").split("/", 2)
        account = unquote(segments[0]) if segments else ""
        fs = unquote(segments[1]) if len(segments) > 1 else ""
        path = unquote(segments[2]).strip("/") if len(segments) > 2 else ""
        try:
            body = self._read_body()
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        with body:
            op = self._op = classify(self.command, fs, path, q, self.headers)
            self._dfs = _is_dfs_call(self.command, q, self.headers)
            stats = emulator.stats_
            with stats.lock:
                stats.ops[op] += 1
            delay, drop, failure = emulator.faults.pick(op)
            if delay:
                time.sleep(delay)
            if drop is not None:
                with stats.lock:
                    stats.faults["dropped"] += 1
                if not drop.get("after"):
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._drop_response = True
            if failure is not None:
                with stats.lock:
                    stats.faults[f"status_{failure['status']}"] += 1
                status = int(failure["status"])
                extra = {}
                if failure.get("retry_after") is not None:
                    extra["Retry-After"] = f"{failure['retry_after']:g}"
                code = failure.get("code") or _FAULT_CODES.get(status, "EmulatorFault")
                self._error(status, code, "injected by the emulator", extra)
            elif not emulator.allow_anonymous and not self._authenticated(account):
                pass  # _authenticated answered
            else:
                try:
                    self._dispatch(op, account, fs, path, q, body)
                except StoreError as exc:
                    self._error(exc.status, exc.code, exc.message)
                except Exception as exc:  # an emulator bug: say so instead of hanging the client
                    self._error(500, "InternalError", f"emulator error: {exc!r}")
            if self._drop_response:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

    def _authenticated(self, account: str) -> bool:
        auth = self.headers.get("Authorization", "")
        scheme, _, rest = auth.partition(" ")
        if scheme == "SharedKey":
            name = rest.partition(":")[0]
            if name != account:
                self._error(
                    403, "AuthenticationFailed",
                    f"SharedKey for account {name!r} used on account {account!r}.",
                )  # fmt: skip
                return False
            return True
        if scheme == "Bearer" and rest.strip():
            return True
        query = dict(parse_qsl(urlsplit(self.path).query))
        if query.get("sig"):
            return True
        with self.server.emulator.stats_.lock:
            self.server.emulator.stats_.faults["unauthenticated"] += 1
        self._error(
            401, "NoAuthenticationInformation",
            "Server failed to authenticate the request. Please refer to the information in the "
            "www-authenticate header.",
            {"WWW-Authenticate": "Bearer resource_id=https://storage.azure.com"},
        )  # fmt: skip
        return False

    # -- the operations ------------------------------------------------------------------------

    def _meta_headers(self) -> dict[str, str]:
        return {
            k[len("x-ms-meta-") :]: v
            for k, v in self.headers.items()
            if k.lower().startswith("x-ms-meta-")
        }

    def _path_headers(self, row: sqlite3.Row) -> dict[str, str]:
        metadata: dict[str, str] = json.loads(row["metadata"])
        directory = row["kind"] == "directory"
        headers = {
            "Last-Modified": _http_date(row["modified"]),
            "ETag": row["etag"],
            "x-ms-creation-time": _http_date(row["created"]),
            "x-ms-resource-type": row["kind"],
            "x-ms-blob-type": "BlockBlob",
            "x-ms-lease-status": "unlocked",
            "x-ms-lease-state": "available",
            "x-ms-server-encrypted": "true",
            "Accept-Ranges": "bytes",
            "Content-Type": row["content_type"] or "application/octet-stream",
        }
        if metadata:
            headers["x-ms-properties"] = format_properties(metadata)
        for key, value in metadata.items():
            headers[f"x-ms-meta-{key}"] = value
        if directory:
            headers["x-ms-meta-hdi_isfolder"] = "true"
        if row["content_md5"]:
            headers["Content-MD5"] = row["content_md5"]
        return headers

    def _changed(self, status: int, row: sqlite3.Row, extra: dict[str, str] | None = None) -> None:
        self._send(
            status,
            {
                "ETag": row["etag"],
                "Last-Modified": _http_date(row["modified"]),
                "x-ms-request-server-encrypted": "true",
                **(extra or {}),
            },
        )

    def _dispatch(
        self, op: str, account: str, fs: str, path: str, q: dict[str, str], body: IO[bytes]
    ) -> None:
        store = self.server.emulator.store
        blob = not self._dfs
        h = self.headers
        if op == "list_filesystems":
            rows = store.list_filesystems(account)
            payload = {
                "filesystems": [
                    {
                        "name": r["name"],
                        "lastModified": _http_date(r["modified"]),
                        "etag": r["etag"],
                    }
                    for r in rows
                ]
            }
            self._json(200, payload)
        elif op == "create_filesystem":
            metadata = self._meta_headers() or parse_properties(h.get("x-ms-properties"))
            row = store.create_filesystem(account, fs, metadata, blob=blob)
            self._changed(201, row)
        elif op == "get_filesystem_properties":
            row = store.require_filesystem(account, fs, blob=blob)
            metadata = json.loads(row["metadata"])
            headers = {
                "ETag": row["etag"],
                "Last-Modified": _http_date(row["modified"]),
                "x-ms-namespace-enabled": "true",
                "x-ms-lease-status": "unlocked",
                "x-ms-lease-state": "available",
                "x-ms-has-immutability-policy": "false",
                "x-ms-has-legal-hold": "false",
                **{f"x-ms-meta-{k}": v for k, v in metadata.items()},
            }
            if metadata:
                headers["x-ms-properties"] = format_properties(metadata)
            self._send(200, headers)
        elif op == "set_filesystem_metadata":
            metadata = (
                parse_properties(h.get("x-ms-properties")) if self._dfs else self._meta_headers()
            )
            row = store.set_filesystem_metadata(account, fs, metadata, blob=blob)
            self._changed(200, row)
        elif op == "delete_filesystem":
            store.delete_filesystem(account, fs, blob=blob)
            self._send(202)
        elif op == "list_paths":
            self._list_paths(account, fs, q)
        elif op in ("create_file", "create_directory"):
            row = store.create(
                account, fs, path, op.removeprefix("create_"),
                metadata=parse_properties(h.get("x-ms-properties")),
                content_type=h.get("x-ms-content-type"),
                if_match=h.get("If-Match"), if_none_match=h.get("If-None-Match"),
            )  # fmt: skip
            self._changed(201, row, {"Content-Length": "0"})
        elif op == "append":
            position = self._int(q, "position")
            self._check_md5(body)
            length = store.append(account, fs, path, position, body)
            with self.server.emulator.stats_.lock:
                self.server.emulator.stats_.appended_bytes += length
                self.server.emulator.stats_.max_append_bytes = max(
                    self.server.emulator.stats_.max_append_bytes, length
                )
            if q.get("flush", "").lower() == "true":
                row = store.flush(
                    account, fs, path, position + length, retain=False, content_md5=None,
                    content_type=None, if_match=None,
                )  # fmt: skip
                self._changed(202, row)
            else:
                self._send(202, {"x-ms-request-server-encrypted": "true"})
        elif op == "flush":
            row = store.flush(
                account, fs, path, self._int(q, "position"),
                retain=q.get("retain", "").lower() == "true",
                content_md5=h.get("x-ms-content-md5"), content_type=h.get("x-ms-content-type"),
                if_match=h.get("If-Match"), if_none_match=h.get("If-None-Match"),
            )  # fmt: skip
            self._changed(200, row, {"Content-Length": "0"})
        elif op == "set_properties":
            row = store.set_metadata(
                account, fs, path, parse_properties(h.get("x-ms-properties")), blob=False
            )
            self._changed(200, row)
        elif op == "set_access_control":
            row = store.require(account, fs, path)
            self._changed(200, row)
        elif op == "set_metadata":
            row = store.set_metadata(account, fs, path, self._meta_headers(), blob=True)
            self._changed(200, row)
        elif op == "set_http_headers":
            store.set_content_type(account, fs, path, h.get("x-ms-blob-content-type"))
            self._changed(200, store.require(account, fs, path, blob=True))
        elif op == "put_blob":
            self._check_md5(body)
            row = store.put_blob(
                account, fs, path, body, self._meta_headers(), h.get("x-ms-blob-content-type"),
                content_md5=h.get("x-ms-blob-content-md5") or h.get("Content-MD5"),
                if_none_match=h.get("If-None-Match"),
            )  # fmt: skip
            self._changed(
                201, row, {"Content-MD5": row["content_md5"]} if row["content_md5"] else {}
            )
        elif op == "put_block":
            block_id = q.get("blockid", "")
            if not block_id:
                raise StoreError(400, "InvalidQueryParameterValue", "blockid is required")
            self._check_md5(body)
            length = store.put_block(account, fs, path, block_id, body)
            with self.server.emulator.stats_.lock:
                self.server.emulator.stats_.max_block_bytes = max(
                    self.server.emulator.stats_.max_block_bytes, length
                )
            self._send(201, {"x-ms-request-server-encrypted": "true"})
        elif op == "put_block_list":
            row = store.put_block_list(
                account, fs, path, _block_list(body.read()), self._meta_headers(),
                h.get("x-ms-blob-content-type"), if_none_match=h.get("If-None-Match"),
            )  # fmt: skip
            self._changed(201, row)
        elif op == "get_properties":
            row = store.require(account, fs, path, blob=blob)
            if not self._conditions_ok(row):
                return
            headers = self._path_headers(row)
            headers["Content-Length"] = str(row["length"])
            if q.get("action") in ("getStatus", "getAccessControl"):
                headers.update(
                    {"x-ms-owner": "$superuser", "x-ms-group": "$superuser",
                     "x-ms-permissions": "rw-r-----", "x-ms-acl": "user::rw-,group::r--,other::---"}
                )  # fmt: skip
            self._send(200, headers)
        elif op == "get_metadata":
            row = store.require(account, fs, path, blob=True)
            headers = {
                k: v for k, v in self._path_headers(row).items() if k.startswith("x-ms-meta-")
            }
            self._send(200, {**headers, "ETag": row["etag"]})
        elif op == "read":
            self._read(store.require(account, fs, path, blob=blob))
        elif op == "rename":
            self._rename(account, fs, path)
        elif op == "delete":
            store.delete(
                account, fs, path, recursive=q.get("recursive", "").lower() == "true",
                if_match=h.get("If-Match"), blob=blob,
            )  # fmt: skip
            self._send(200 if self._dfs else 202)
        else:
            raise StoreError(
                400, "UnsupportedHttpVerb" if op == "unsupported" else "UnsupportedOperation",
                f"the emulator does not support {self.command} {self.path.split('?')[0]} "
                f"with these parameters",
            )  # fmt: skip

    def _int(self, q: dict[str, str], name: str) -> int:
        try:
            return int(q[name])
        except (KeyError, ValueError) as exc:
            raise StoreError(
                400, "InvalidQueryParameterValue", f"query parameter {name!r} is required"
            ) from exc

    def _check_md5(self, body: IO[bytes]) -> None:
        expected = self.headers.get("Content-MD5")
        if not expected:
            return
        with self.server.emulator.stats_.lock:
            self.server.emulator.stats_.md5_checked += 1
        h = hashlib.md5()
        while chunk := body.read(COPY_CHUNK):
            h.update(chunk)
        body.seek(0)
        if base64.b64encode(h.digest()).decode() != expected:
            raise StoreError(
                400, "Md5Mismatch", "The MD5 value specified in the request did not match."
            )

    def _conditions_ok(self, row: sqlite3.Row) -> bool:
        if_match, if_none = self.headers.get("If-Match"), self.headers.get("If-None-Match")
        if if_match and if_match not in ("*", row["etag"]):
            self._error(412, "ConditionNotMet", "If-Match did not match.")
            return False
        if if_none and if_none in ("*", row["etag"]):
            if self.command in ("GET", "HEAD"):
                self._send(304, {"ETag": row["etag"]})
            else:
                self._error(412, "ConditionNotMet", "If-None-Match matched.")
            return False
        return True

    def _read(self, row: sqlite3.Row) -> None:
        if row["kind"] == "directory":
            headers = self._path_headers(row)
            self._send(200, headers)
            return
        if not self._conditions_ok(row):
            return
        size: int = row["length"]
        headers = self._path_headers(row)
        spec = self.headers.get("x-ms-range") or self.headers.get("Range")
        start, end, status = 0, size - 1, 200
        if spec:
            unit, _, span = spec.partition("=")
            first, _, last = span.partition("-")
            try:
                if unit.strip() != "bytes" or not first:
                    raise ValueError(spec)
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            except ValueError as exc:
                raise StoreError(400, "InvalidRange", f"bad range {spec!r}") from exc
            if start >= size or start > end:
                self._error(
                    416, "InvalidRange", "The range specified is invalid for the current size "
                    "of the resource.", {"Content-Range": f"bytes */{size}"},
                )  # fmt: skip
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            if row["content_md5"]:
                headers["x-ms-blob-content-md5"] = headers.pop("Content-MD5")
        length = max(0, end - start + 1)
        fh = self.server.emulator.store.open_blob(row)
        if spec and self.headers.get("x-ms-range-get-content-md5", "").lower() == "true":
            h = hashlib.md5()
            if fh is not None:
                fh.seek(start)
                h.update(fh.read(length))
            headers["Content-MD5"] = base64.b64encode(h.digest()).decode()
        if fh is None:
            self._send(status, {**headers, "Content-Length": "0"})
            return
        fh.seek(start)
        headers["Content-Length"] = str(length)
        self._send(status, headers, stream=fh, length=length)

    def _rename(self, account: str, fs: str, path: str) -> None:
        source = self.headers["x-ms-rename-source"].split("?", 1)[0]
        src_fs, _, src_path = source.lstrip("/").partition("/")
        src_fs, src_path = unquote(src_fs), unquote(src_path).strip("/")
        if not src_fs or not src_path:
            raise StoreError(400, "InvalidSourceUri", f"bad x-ms-rename-source {source!r}")
        row = self.server.emulator.store.rename(
            account, src_fs, src_path, fs, path,
            if_none_match=self.headers.get("If-None-Match"),
            if_match=self.headers.get("If-Match"),
        )  # fmt: skip
        self._changed(201, row, {"Content-Length": "0"})

    def _list_paths(self, account: str, fs: str, q: dict[str, str]) -> None:
        store = self.server.emulator.store
        directory = q.get("directory", "").strip("/")
        after = ""
        if q.get("continuation"):
            after = base64.urlsafe_b64decode(q["continuation"].encode()).decode()
        limit = int(q.get("maxresults") or LIST_MAX_RESULTS)
        rows, next_key = store.list_paths(
            account, fs, directory, recursive=q.get("recursive", "").lower() == "true",
            after=after, limit=min(limit, LIST_MAX_RESULTS),
        )  # fmt: skip
        paths = []
        for r in rows:
            entry = {
                "name": r["path"],
                "contentLength": str(r["length"]),
                "lastModified": _http_date(r["modified"]),
                "etag": r["etag"].strip('"'),
                "owner": "$superuser",
                "group": "$superuser",
                "permissions": "rw-r-----",
                "creationTime": _filetime(r["created"]),
            }
            if r["kind"] == "directory":
                entry["isDirectory"] = "true"
            paths.append(entry)
        extra = {}
        if next_key is not None:
            extra["x-ms-continuation"] = base64.urlsafe_b64encode(next_key.encode()).decode()
        self._json(200, {"paths": paths}, extra)

    def _json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self._send(
            status, {"Content-Type": "application/json;charset=utf-8", **(extra or {})}, body
        )

    # -- control -------------------------------------------------------------------------------

    def _control(self, route: str, q: dict[str, str]) -> None:
        emulator = self.server.emulator
        self._dfs = True
        try:
            body = self._read_body()
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        with body:
            raw = body.read()
        try:
            if route == "/_emulator/faults" and self.command == "POST":
                emulator.apply_faults(json.loads(raw or b"{}"))
                self._json(200, emulator.faults.state())
            elif route == "/_emulator/faults":
                self._json(200, emulator.faults.state())
            elif route == "/_emulator/stats/reset" and self.command == "POST":
                emulator.reset_stats()
                self._json(200, emulator.stats())
            elif route == "/_emulator/stats":
                self._json(200, emulator.stats())
            elif route == "/_emulator/files":
                account = q.get("account", DEFAULT_ACCOUNT)
                rows = emulator.store.files(account, q.get("filesystem", ""))
                files = {
                    p: {"size": r["length"], "metadata": json.loads(r["metadata"]),
                        **({"sha256": emulator.store.sha256(r)} if q.get("sha256") else {})}
                    for p, r in rows.items()
                }  # fmt: skip
                self._json(200, files)
            else:
                self._error(404, "ResourceNotFound", f"no control route {route}")
        except (ValueError, TypeError, KeyError) as exc:
            self._error(400, "InvalidInput", f"bad control request: {exc!r}")


# --- the emulator as tests and the command line see it ------------------------------------------


class DfsEmulator:
    """The server: state under ``root``, faults and counters; ``start()`` serves in a thread."""

    def __init__(
        self,
        root: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_anonymous: bool = False,
        verbose: bool = False,
    ) -> None:
        self.store = Store(Path(root))
        self.faults = Faults()
        self.stats_ = Stats()
        self.allow_anonymous = allow_anonymous
        self.verbose = verbose
        self.stopped = False
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]!s}:{self.port}"

    def account_url(self, account: str = DEFAULT_ACCOUNT) -> str:
        return f"{self.url}/{account}"

    def start(self) -> DfsEmulator:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="dfs-emulator", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self.stopped = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        with self.store.lock:
            self.store.db.close()

    def __enter__(self) -> DfsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and counters (the same names as RemoteControl) ---------------------------------

    def fail_next(
        self, n: int, status: int = 503, retry_after: float | None = None,
        ops: list[str] | None = None, code: str | None = None,
    ) -> None:  # fmt: skip
        self.faults.fail_next(n, status, retry_after, ops, code)

    def storm(
        self, status: int = 503, seconds: float = 5.0, retry_after: float | None = None,
        ops: list[str] | None = None, code: str | None = None,
    ) -> None:  # fmt: skip
        self.faults.storm(status, seconds, retry_after, ops, code)

    def latency(self, seconds: float) -> None:
        self.faults.latency(seconds)

    def drop_connections(self, n: int, ops: list[str] | None = None, after: bool = False) -> None:
        self.faults.drop_connections(n, ops, after)

    def reset(self) -> None:
        self.faults.reset()

    def stats(self) -> dict[str, Any]:
        return self.stats_.snapshot()

    def reset_stats(self) -> None:
        self.stats_.reset()

    def apply_faults(self, spec: dict[str, Any]) -> None:
        """The JSON of ``POST /_emulator/faults``."""
        if spec.get("reset"):
            self.reset()
        if "fail_next" in spec:
            self.fail_next(**spec["fail_next"])
        if "storm" in spec:
            self.storm(**spec["storm"])
        if "latency" in spec:
            self.latency(**spec["latency"])
        if "drop_connections" in spec:
            self.drop_connections(**spec["drop_connections"])

    # -- what the tests look at ----------------------------------------------------------------

    def files(self, filesystem: str, account: str = DEFAULT_ACCOUNT) -> dict[str, dict[str, Any]]:
        """Every file of a filesystem: ``{path: {"size", "metadata", "sha256"}}``."""
        rows = self.store.files(account, filesystem)
        return {
            path: {
                "size": row["length"],
                "metadata": json.loads(row["metadata"]),
                "sha256": self.store.sha256(row),
            }
            for path, row in rows.items()
        }

    def read_file(self, filesystem: str, path: str, account: str = DEFAULT_ACCOUNT) -> bytes:
        return self.store.read_bytes(account, filesystem, path)

    def create_filesystem(self, filesystem: str, account: str = DEFAULT_ACCOUNT) -> None:
        with contextlib.suppress(StoreError):
            self.store.create_filesystem(account, filesystem, {}, blob=False)


class RemoteControl:
    """The fault switches and counters of an emulator, through its HTTP control endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, route: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.url}/_emulator/{route}", data=data, method="POST" if data is not None else "GET"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def fail_next(
        self, n: int, status: int = 503, retry_after: float | None = None,
        ops: list[str] | None = None, code: str | None = None,
    ) -> None:  # fmt: skip
        spec = {"n": n, "status": status, "retry_after": retry_after, "ops": ops, "code": code}
        self._call("faults", {"fail_next": spec})

    def storm(
        self, status: int = 503, seconds: float = 5.0, retry_after: float | None = None,
        ops: list[str] | None = None, code: str | None = None,
    ) -> None:  # fmt: skip
        spec = {"status": status, "seconds": seconds, "retry_after": retry_after, "ops": ops,
                "code": code}  # fmt: skip
        self._call("faults", {"storm": spec})

    def latency(self, seconds: float) -> None:
        self._call("faults", {"latency": {"seconds": seconds}})

    def drop_connections(self, n: int, ops: list[str] | None = None, after: bool = False) -> None:
        self._call("faults", {"drop_connections": {"n": n, "ops": ops, "after": after}})

    def reset(self) -> None:
        self._call("faults", {"reset": True})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("stats")
        return result

    def reset_stats(self) -> None:
        self._call("stats/reset", {})


@contextlib.contextmanager
def serve(root: Path | str, port: int = 0, **kwargs: Any) -> Iterator[DfsEmulator]:
    """Run an emulator in a background thread for the duration of the ``with`` block."""
    emulator = DfsEmulator(root, port=port, **kwargs).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10004, help="0 picks a free port")
    parser.add_argument("--root", default="var/dfs-emulator", help="where state is kept")
    parser.add_argument(
        "--filesystem", action="append", default=[],
        help="create this filesystem in the default account at start (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-anonymous", action="store_true", help="accept requests with no credential"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    emulator = DfsEmulator(
        args.root, host=args.host, port=args.port, allow_anonymous=args.allow_anonymous,
        verbose=args.verbose,
    )  # fmt: skip
    for name in args.filesystem:
        emulator.create_filesystem(name)
    print(emulator.account_url(), flush=True)
    try:
        emulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emulator._httpd.server_close()


if __name__ == "__main__":
    main()
