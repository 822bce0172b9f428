"""The sha256 stamp: a file's checksum kept in its own extended attribute.

``user.lakeferry.sha256`` holds ``<sha256 hex>:<size>:<mtime in ns>``. It describes the file's
content only while the size and mtime still match (so a file changed behind our back shows
as unstamped, never with a wrong checksum). The cache stamps each entry before publishing it
(:mod:`lakeferry_localfs.cache`), the sink each landed file (:mod:`lakeferry_localfs.sink`);
a file the sink hard-links from the cache is one inode with one stamp, the same for both.
"""

from __future__ import annotations

import os

XATTR = "user.lakeferry.sha256"


def stamp(sha256: str, size: int, mtime_ns: int) -> bytes:
    return f"{sha256}:{size}:{mtime_ns}".encode()


def parse_stamp(raw: bytes, st: os.stat_result) -> str | None:
    """The sha256 a stamp records, if it still describes a file of this size and mtime."""
    sha256, _, rest = raw.decode("ascii", "replace").partition(":")
    if rest == f"{st.st_size}:{st.st_mtime_ns}" and len(sha256) == 64:
        return sha256
    return None
