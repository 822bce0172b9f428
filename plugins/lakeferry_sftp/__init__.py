"""lakeferry example plugin ``sftp``: a downloader for ``sftp://user@host:port/path`` URLs.

The model for a site team's protocol plugin: it imports only :mod:`lakeferry.api`, registers
itself by entry point (``sftp = "lakeferry_sftp"`` in the ``lakeferry`` group), runs every
blocking library call (paramiko) in a worker thread, streams in chunks, resumes, classifies
every failure as transient or permanent, and connects through the core's SSRF guard. See
:class:`~lakeferry_sftp.downloader.SftpDownloader` and :mod:`lakeferry_sftp.session`.
"""

from __future__ import annotations

from collections.abc import Callable

from lakeferry.api import hookimpl
from lakeferry_sftp.downloader import SftpDownloader, SftpDownloaderSettings

__all__ = ["SftpDownloader", "SftpDownloaderSettings"]


@hookimpl
def lakeferry_register_downloaders(register: Callable[..., None]) -> None:
    register("sftp", ("sftp",), SftpDownloader, SftpDownloaderSettings)
