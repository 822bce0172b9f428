"""lakeferry built-in plugin ``http``: a downloader for ``http://`` and ``https://`` URLs.

Streams with httpx over a few small connection pools, classifies every failure as transient or
permanent, and connects only to public addresses unless ``allow_networks`` says otherwise. See
:class:`~lakeferry_http.downloader.HttpDownloader` and :mod:`lakeferry_http.guard`.
"""

from __future__ import annotations

from lakeferry.api import RegisterDownloader, hookimpl
from lakeferry_http.downloader import HttpDownloader, HttpDownloaderSettings

__all__ = ["HttpDownloader", "HttpDownloaderSettings"]


@hookimpl
def lakeferry_register_downloaders(register: RegisterDownloader) -> None:
    register("http", ("http", "https"), HttpDownloader, HttpDownloaderSettings)
