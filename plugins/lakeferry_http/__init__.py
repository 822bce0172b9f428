"""lakeferry built-in plugin ``http``: a downloader for ``http://`` and ``https://`` URLs.

Streams with httpx (:mod:`lakeferry_http.httpx_engine`) or libcurl
(:mod:`lakeferry_http.curl_engine`, ``engine = "curl"``), classifies every failure as transient
or permanent, and connects only to public addresses unless ``allow_networks`` says otherwise.
See :class:`~lakeferry_http.downloader.HttpDownloader`.
"""

from __future__ import annotations

from lakeferry.api import RegisterDownloader, hookimpl
from lakeferry_http.downloader import HttpDownloader, HttpDownloaderSettings

__all__ = ["HttpDownloader", "HttpDownloaderSettings"]


@hookimpl
def lakeferry_register_downloaders(register: RegisterDownloader) -> None:
    register("http", ("http", "https"), HttpDownloader, HttpDownloaderSettings)
