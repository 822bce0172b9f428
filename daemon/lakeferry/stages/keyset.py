"""A set of strings in about 16 bytes per member: the landed keys of an exactly-once writer.

:class:`lakeferry.stages.exactly_once.ExactlyOnce` remembers every key (event id, origin) in
its table, so a key delivered twice at two offsets is skipped. As a Python ``set[str]`` that
costs ~100 bytes per key (the string object and the hash table's slot): a results process
grew ~40 MiB per 450,000 events (half an hour at 250 files/s) and without bound over months.
Here a key is its 128-bit BLAKE2b digest (a false "already landed" would need two of the
table's keys to collide: about 10**-20 for 10**9 keys), kept

- in two sorted arrays of 64-bit halves (16 bytes per key; looked up by bisection in C), and
- in a small ``set`` of the digests added since the last merge, folded into the arrays once it
  holds ``merge_at`` digests (a merge copies the arrays once: 16 bytes per key, briefly).

Membership, ``add``/``update`` and ``len`` are what the writer needs; members cannot be listed
back (the table holds them). A lookup or an add costs a few microseconds (a set: under one);
building it from 1,000,000 keys a few seconds (a set: a fraction of one), which a writer pays
when it (re)reads its table's state: at start, on a rebalance, after a failed commit.
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from array import array
from collections.abc import Iterable

MERGE_AT = 65_536
"""Digests added since the last merge, at most (~6 MiB as a set), before they are merged."""


def digest(key: str) -> bytes:
    """The 128-bit BLAKE2b digest of ``key``."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def _halves(ordered: list[bytes]) -> tuple[array[int], array[int]]:
    """Digests in byte order as arrays of their big-endian 64-bit halves (same order)."""
    both = array("Q", b"".join(ordered))
    if sys.byteorder == "little":
        both.byteswap()
    return both[0::2], both[1::2]


class KeySet:
    """The landed keys (see the module docstring)."""

    def __init__(self, keys: Iterable[str] = (), *, merge_at: int | None = None) -> None:
        self._merge_at = MERGE_AT if merge_at is None else merge_at
        self._recent: set[bytes] = set()
        # briefly ~100 bytes per key while the digests are sorted
        blake2b = hashlib.blake2b
        digests = {blake2b(k.encode(), digest_size=16).digest() for k in keys}
        self._high, self._low = _halves(sorted(digests))

    def __len__(self) -> int:
        return len(self._high) + len(self._recent)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        d = digest(key)
        return d in self._recent or self._stored(d)

    def _stored(self, d: bytes) -> bool:
        high, low = int.from_bytes(d[:8]), int.from_bytes(d[8:])
        i = bisect.bisect_left(self._high, high)
        while i < len(self._high) and self._high[i] == high:
            if self._low[i] == low:
                return True
            i += 1
        return False

    def add(self, key: str) -> None:
        d = digest(key)
        if not self._stored(d):
            self._recent.add(d)
            if len(self._recent) >= self._merge_at:
                self._merge(self._recent)
                self._recent = set()

    def update(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)

    def _merge(self, digests: Iterable[bytes]) -> None:
        """Insert ``digests`` (none of them stored yet) in order, into new arrays."""
        old_high, old_low = self._high, self._low
        new_high, new_low = _halves(sorted(digests))
        high, low = array("Q"), array("Q")
        at = 0
        for h, lo in zip(new_high, new_low, strict=True):
            i = bisect.bisect_left(old_high, h, lo=at)
            while i < len(old_high) and old_high[i] == h and old_low[i] < lo:
                i += 1
            high.extend(old_high[at:i])
            low.extend(old_low[at:i])
            high.append(h)
            low.append(lo)
            at = i
        high.extend(old_high[at:])
        low.extend(old_low[at:])
        self._high, self._low = high, low
