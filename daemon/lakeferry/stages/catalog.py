"""Every stage, in the order an event passes them: the one list the daemon derives from.

To add a stage, write its module (its handler, its ``run_<name>`` and its ``SPEC``) and list
the spec here; ``lakeferry run --stages``, the components a process builds, its limiters, lag
reporting, live reload and the systemd templates' test follow from this list.
"""

from __future__ import annotations

from collections.abc import Iterable

from lakeferry.stages import download, ingest, results, upload
from lakeferry.stagespec import StageSpec

CATALOG: tuple[StageSpec, ...] = (ingest.SPEC, download.SPEC, upload.SPEC, results.SPEC)

STAGES: tuple[str, ...] = tuple(spec.name for spec in CATALOG)
"""Every stage's name (``lakeferry run --stages`` takes a subset)."""


def specs(names: Iterable[str], catalog: Iterable[StageSpec] = CATALOG) -> tuple[StageSpec, ...]:
    """The specs of ``names``, in catalog order (unknown names: KeyError)."""
    wanted = set(names)
    chosen = tuple(spec for spec in catalog if spec.name in wanted)
    unknown = wanted - {spec.name for spec in chosen}
    if unknown:
        raise KeyError(", ".join(sorted(unknown)))
    return chosen


def live_keys(catalog: Iterable[StageSpec] = CATALOG) -> frozenset[str]:
    """Settings the stages read while running (a SIGHUP applies them without a restart)."""
    return frozenset().union(*(spec.live_keys for spec in catalog))
