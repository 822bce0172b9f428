"""lakeferry: a daemon that moves files named by events into a data lake, exactly once.

The import name is ``lakeferry`` (never ``daemon``: python-daemon owns that name).
Plugins import only :mod:`lakeferry.api`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lakeferry")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
