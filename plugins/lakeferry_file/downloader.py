"""The ``file`` downloader: streams a local file named by a ``file://`` URL into the cache.

Policy: a URL is served only when its file, with every symlink resolved, lies inside one of
``roots``; with no roots configured (the default) every ``file://`` URL is refused. The check is
made on the resolved path before opening and again, on Linux, on the path of the descriptor
actually opened (``/proc/self/fd``), so swapping a directory for a symlink between the two steps
does not escape a root. Only regular files are read: a FIFO or device could block or never end.

Error handling (all PermanentError, since retrying cannot change a local file system's answer
in a useful time): outside the roots, not a regular file, unreadable, or a remote host in the
URL → ``blocked``; missing → ``not_found``; not a usable file URL → ``malformed``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

import msgspec
import trio

from lakeferry.api import (
    CacheWriter,
    ConfigError,
    DownloadTask,
    PermanentError,
    PluginContext,
    Reason,
    redact_url,
)

CHUNK_SIZE = 1024 * 1024
IO_THREADS = 8
_PROC_FD = Path("/proc/self/fd")

T = TypeVar("T")


class FileDownloaderSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[downloaders.file]``."""

    roots: list[str] = []
    """Absolute directories whose files may be read. Empty: refuse every ``file://`` URL."""


class FileDownloader:
    """The ``file`` :class:`lakeferry.api.Downloader`."""

    supports_resume = False
    """A failed read starts again from the beginning of the file (local reads are cheap)."""

    def __init__(self, settings: FileDownloaderSettings, context: PluginContext) -> None:
        roots = []
        for root in settings.roots:
            expanded = os.path.expanduser(root)
            if not os.path.isabs(expanded):
                raise ConfigError("downloaders.file.roots", f"{root!r} is not an absolute path")
            roots.append(Path(os.path.realpath(expanded)))
        self._roots = tuple(roots)
        self._log = context.logger
        self._limiter = trio.CapacityLimiter(IO_THREADS)

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._roots

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def fetch(self, task: DownloadTask, out: CacheWriter) -> None:
        url = task.event.url
        shown = redact_url(url)
        path = _path_of(url, shown)
        if not self._roots:
            raise PermanentError(
                Reason.BLOCKED,
                f"{shown}: file:// URLs are refused (no [downloaders.file] roots configured)",
            )
        with trio.CancelScope(shield=True):  # never cancelled with the file already open
            fh = await self._run(self._open, path, shown)
        try:
            while chunk := await self._run(fh.read, CHUNK_SIZE):
                await out.write(chunk)
        finally:
            fh.close()

    def _inside_roots(self, path: str) -> bool:
        return any(Path(path).is_relative_to(root) for root in self._roots)

    def _open(self, path: str, shown: str) -> BinaryIO:
        real = os.path.realpath(path)
        if not self._inside_roots(real):
            raise PermanentError(Reason.BLOCKED, f"{shown} is outside the allowed roots")
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(real, flags)
        except FileNotFoundError as exc:
            raise PermanentError(Reason.NOT_FOUND, f"{shown}: no such file") from exc
        except OSError as exc:
            raise PermanentError(Reason.BLOCKED, f"{shown}: cannot open: {exc.strerror}") from exc
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise PermanentError(Reason.NOT_FOUND, f"{shown} is a directory, not a file")
            if not stat.S_ISREG(mode):
                raise PermanentError(Reason.BLOCKED, f"{shown} is not a regular file")
            try:
                opened = os.readlink(_PROC_FD / str(fd))
            except OSError:
                opened = real  # no /proc: the check on the resolved path stands
            if not self._inside_roots(opened):
                raise PermanentError(Reason.BLOCKED, f"{shown} is outside the allowed roots")
            return os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _path_of(url: str, shown: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise PermanentError(Reason.MALFORMED, f"{shown}: not a valid URL") from exc
    if parts.scheme.lower() != "file":
        raise PermanentError(Reason.UNSUPPORTED_SCHEME, f"{shown}: not a file:// URL")
    if parts.netloc not in ("", "localhost"):
        raise PermanentError(Reason.BLOCKED, f"{shown}: file URLs on other hosts are refused")
    path = unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise PermanentError(Reason.MALFORMED, f"{shown}: needs an absolute path")
    return path
