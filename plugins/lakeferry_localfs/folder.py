"""The folder a localfs component owns (the cache's ``path``, the sink's ``root``): made ready,
or only checked (``lakeferry check-config``: the same refusals, nothing created)."""

from __future__ import annotations

import os
from pathlib import Path

from lakeferry.api import ConfigError


def ready_folder(setting: str, value: str, *, check_only: bool) -> Path:
    """``value`` as a usable folder: created when missing (not in check-only mode, which only
    checks that it could be), refused with a ConfigError naming ``setting`` otherwise."""
    path = Path(value).expanduser()
    if check_only:
        _check(setting, value, path)
        return path.absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve(strict=True)
    except FileExistsError:
        raise ConfigError(setting, f"{value!r} is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(setting, f"cannot use {value!r}: {exc.strerror or exc}") from None


def _check(setting: str, value: str, path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise ConfigError(setting, f"{value!r} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(setting, f"cannot use {value!r}: permission denied")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(setting, f"cannot create {value!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(setting, f"cannot create {value!r}: permission denied in {parent}")
