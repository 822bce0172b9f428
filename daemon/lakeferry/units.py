"""Config value types: durations (``"250ms"``, ``"5m"``), byte sizes (``"20GiB"``), local paths.

Durations and sizes are plain ``float``/``int`` subclasses so code uses them as numbers
(seconds, bytes); :func:`dec_hook` teaches msgspec to parse them from strings or numbers.
:data:`LocalPath` marks a setting that names a file or folder on this machine: a relative one
is relative to the folder of the config file it is in (the daemon resolves it when it loads the
file, defaults included), as nginx and systemd read theirs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from msgspec import Meta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|K|M|G|T)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}  # fmt: skip


class Duration(float):
    """Seconds. Parsed from a number of seconds or a string with unit ms, s, m, h or d."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration, got {value!r}")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            m = _DURATION.match(value)
            if m is None:
                raise ValueError(
                    f"invalid duration {value!r} (use e.g. '250ms', '30s', '5m', '1h')"
                )
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise ValueError(f"expected a duration, got {type(value).__name__}")
        if seconds < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return cls(seconds)

    def __repr__(self) -> str:
        return format_duration(self)


class ByteSize(int):
    """Bytes. Parsed from an integer or a string with unit B, KB/MB/GB/TB or KiB/MiB/GiB/TiB."""

    @classmethod
    def parse(cls, value: object) -> ByteSize:
        if isinstance(value, bool):
            raise ValueError(f"expected a size, got {value!r}")
        if isinstance(value, int):
            n = value
        elif isinstance(value, str):
            m = _SIZE.match(value)
            if m is None:
                raise ValueError(f"invalid size {value!r} (use e.g. '512MiB', '20GiB', '10GB')")
            n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
        else:
            raise ValueError(f"expected a size, got {type(value).__name__}")
        if n < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        return cls(n)


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def dec_hook(type_: type, value: Any) -> Any:
    """msgspec decode hook for :class:`Duration` and :class:`ByteSize`."""
    if type_ is Duration:
        return Duration.parse(value)
    if type_ is ByteSize:
        return ByteSize.parse(value)
    raise NotImplementedError(f"unsupported type {type_!r}")


LocalPath = Annotated[str, Meta(extra={"lakeferry": "local_path"})]
"""A file or folder on this machine; relative: to the config file's folder (``""``: unset)."""
LocalPathOrUri = Annotated[str, Meta(extra={"lakeferry": "local_path_or_uri"})]
"""A :data:`LocalPath`, or a URI (``abfss://...``), which is left as it is."""
