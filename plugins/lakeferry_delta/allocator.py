"""deltalake's native allocator, configured before deltalake is loaded.

deltalake's Rust core allocates through its own jemalloc (symbols prefixed ``_rjem_``), which
keeps freed pages ("dirty") for ``dirty_decay_ms`` (10 s by default) before giving them back to
the kernel. A Delta writer's allocations churn: every commit replays the log since the last
checkpoint and materialises the table's file list, every compaction reads and writes whole
files. Under a steady stream the pages held for reuse followed that churn and looked like a
leak: a writer's anonymous memory climbed from ~80 to ~140 MiB over 2,500 commits while the
live Python heap stayed at 5 MiB. With ``dirty_decay_ms:0`` freed pages go back at once and the
same run stays at 46 to 52 MiB, for
~0.004 s of system CPU per commit (bench/analysis.md, "Memory and the results stage").

jemalloc reads ``_RJEM_MALLOC_CONF`` when it initialises, which is when deltalake's library
first allocates, so :func:`configure` must run before ``import deltalake``: the package runs it
on import, and every module of it that imports deltalake imports the package first. An
operator's own ``_RJEM_MALLOC_CONF`` is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENVIRONMENT = "_RJEM_MALLOC_CONF"
"""The variable deltalake's jemalloc reads its options from (tikv-jemallocator's prefix)."""

OPTIONS = "dirty_decay_ms:0"
"""Freed pages go back to the kernel at once instead of 10 s later."""


def configure(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set deltalake's allocator options unless the environment already names some."""
    environ.setdefault(ENVIRONMENT, OPTIONS)
