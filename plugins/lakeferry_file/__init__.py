"""lakeferry built-in plugin ``file``: a downloader for ``file://`` URLs inside allowed roots.

Reading local files named by event payloads is dangerous (``file:///etc/shadow``,
``file:///proc/self/environ``), so the downloader refuses every URL unless its file lies inside
one of the configured ``roots`` after symlinks are resolved. See
:class:`~lakeferry_file.downloader.FileDownloader`.
"""

from __future__ import annotations

from lakeferry.api import RegisterDownloader, hookimpl
from lakeferry_file.downloader import FileDownloader, FileDownloaderSettings

__all__ = ["FileDownloader", "FileDownloaderSettings"]


@hookimpl
def lakeferry_register_downloaders(register: RegisterDownloader) -> None:
    register("file", ("file",), FileDownloader, FileDownloaderSettings)
