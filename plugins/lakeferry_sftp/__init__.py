"""lakeferry example plugin ``sftp``: a downloader for ``sftp://user@host:port/path`` URLs.

The model for a site team's protocol plugin: it imports only :mod:`lakeferry.api`, registers
itself by entry point (``sftp = "lakeferry_sftp"`` in the ``lakeferry`` group) without
importing its library (the settings are in :mod:`lakeferry_sftp.settings`, paramiko is imported
when the downloader is built), runs every blocking library call in a worker thread, streams in
chunks, resumes, classifies every failure as transient or permanent, and connects through the
core's SSRF guard. See :class:`~lakeferry_sftp.downloader.SftpDownloader` and
:mod:`lakeferry_sftp.session`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeferry.api import RegisterDownloader, hookimpl, lazy_exports, lazy_factory
from lakeferry_sftp.settings import SftpDownloaderSettings

if TYPE_CHECKING:
    from lakeferry_sftp.downloader import SftpDownloader

__all__ = ["SftpDownloader", "SftpDownloaderSettings"]


# Imported on first use, not with the plugin: paramiko costs ~17 MiB.
__getattr__ = lazy_exports(__name__, {"SftpDownloader": "downloader"})


@hookimpl
def lakeferry_register_downloaders(register: RegisterDownloader) -> None:
    register(
        "sftp", ("sftp",), lazy_factory("lakeferry_sftp.downloader:SftpDownloader"),
        SftpDownloaderSettings,
    )  # fmt: skip
