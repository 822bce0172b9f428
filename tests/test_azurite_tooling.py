"""Azurite from npm runs here, and the real Azure Blob SDK talks to it."""

from __future__ import annotations

from typing import Any

from azure.storage.blob import BlobServiceClient


def test_blob_round_trip(azurite: Any) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container("tooling-check")
    container.upload_blob("a/b.txt", b"hello")
    assert container.download_blob("a/b.txt").readall() == b"hello"
    assert [b.name for b in container.list_blobs()] == ["a/b.txt"]
