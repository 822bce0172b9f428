"""A checkpoint store that makes sure a stopped instance hands its partitions back.

The SDK releases a partition on shutdown by writing its ownership blob with an empty owner,
conditional on the blob's etag as its load-balancing thread last saw it. That thread keeps
renewing ownership (new etags) while the receivers close one by one, so a release can lose
the race: the partition then stays "owned" by a stopped instance until its ownership expires
(``partition_ownership_expiration_interval``), and nobody reads it meanwhile.

:class:`ReleasingCheckpointStore` wraps the blob store (through the SDK's public
``CheckpointStore`` interface): once :meth:`stop_renewing` is called it lets only releases
through, and :meth:`release_remaining`, called after the SDK stopped, releases whatever this
instance still owns, with fresh etags.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from azure.eventhub import CheckpointStore


class ReleasingCheckpointStore(CheckpointStore):
    """Delegates to ``inner``; learns this instance's owner id from its claims."""

    def __init__(self, inner: CheckpointStore) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._stopping = False
        self._owner_id: str | None = None
        self._scope: tuple[str, str, str] | None = None
        """(namespace, event hub, consumer group) as the SDK names them in ownership records."""

    def list_ownership(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        return self.inner.list_ownership(
            fully_qualified_namespace, eventhub_name, consumer_group, **kwargs
        )

    def claim_ownership(
        self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        requested = list(ownership_list)
        with self._lock:
            for ownership in requested:
                if ownership.get("owner_id"):
                    self._owner_id = ownership["owner_id"]
                    self._scope = (
                        ownership["fully_qualified_namespace"],
                        ownership["eventhub_name"],
                        ownership["consumer_group"],
                    )
            if self._stopping:  # only releases from now on
                requested = [o for o in requested if not o.get("owner_id")]
        if not requested:
            return []
        return self.inner.claim_ownership(requested, **kwargs)

    def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        self.inner.update_checkpoint(checkpoint, **kwargs)

    def list_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        return self.inner.list_checkpoints(
            fully_qualified_namespace, eventhub_name, consumer_group, **kwargs
        )

    def stop_renewing(self) -> None:
        """Shutdown began: claims and renewals are dropped, releases still go through."""
        with self._lock:
            self._stopping = True

    def release_remaining(self) -> list[str]:
        """Release every partition still owned by this instance; the partition ids released.

        Call once the SDK stopped. A partition someone else claimed meanwhile is left alone
        (the conditional write fails for it and the store leaves it out of its answer).
        """
        with self._lock:
            owner, scope = self._owner_id, self._scope
        if owner is None or scope is None:
            return []
        mine = [dict(o) for o in self.inner.list_ownership(*scope) if o.get("owner_id") == owner]
        for ownership in mine:
            ownership["owner_id"] = ""
        if not mine:
            return []
        return [o["partition_id"] for o in self.inner.claim_ownership(mine)]
