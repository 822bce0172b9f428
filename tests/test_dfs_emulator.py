"""The DFS emulator itself (``tools/dfs_emulator.py``), driven by the real SDK where it can be.

The ``onelake`` sink's tests cover the calls the sink makes; these cover what the emulator
promises beyond them: durability across a restart, the flush rules, paging, directory renames,
the Blob API's Put Blob and Put Block / Put Block List (with azure-storage-blob), the control
endpoint, and the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import HttpResponse as LegacyHttpResponse
from azure.core.rest import HttpResponse
from azure.storage.blob import BlobBlock, ContainerClient
from azure.storage.filedatalake import DataLakeServiceClient, FileSystemClient

from helpers.dfs import RemoteControl, dfs_tool
from helpers.tools import TOOLS

SAS = "sv=2024-01-01&sig=x"


def error_code(error: HttpResponseError) -> object:
    """The storage error code (a str enum): azure-storage sets it on the exception at run time;
    azure-core's class does not declare it."""
    return getattr(error, "error_code", None)


def filesystem(emulator: Any, name: str = "fs") -> FileSystemClient:
    client = DataLakeServiceClient(emulator.account_url(), credential=SAS)
    fs = client.get_file_system_client(name)
    if not fs.exists():
        fs.create_file_system()
    return fs


def test_flushed_bytes_and_staged_appends_survive_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "state"
    with dfs_tool.serve(root) as emulator:
        fs = filesystem(emulator)
        done = fs.get_file_client("a/done.bin")
        done.create_file(metadata={"k": "v"})
        done.append_data(b"0123456789", 0, 10)
        done.flush_data(10)
        half = fs.get_file_client("a/half.bin")
        half.create_file()
        half.append_data(b"abc", 0, 3)  # staged, not flushed
        fs.close()
    with dfs_tool.serve(root) as emulator:  # a new process would see the same
        fs = filesystem(emulator)
        assert fs.get_file_client("a/done.bin").download_file().readall() == b"0123456789"
        assert fs.get_file_client("a/done.bin").get_file_properties().metadata == {"k": "v"}
        half = fs.get_file_client("a/half.bin")
        assert half.get_file_properties().size == 0
        half.flush_data(3)
        assert half.download_file().readall() == b"abc"
        fs.close()


def test_appends_in_any_order_and_the_flush_rules(dfs_emulator: Any) -> None:
    fs = filesystem(dfs_emulator)
    f = fs.get_file_client("f.bin")
    f.create_file()
    f.append_data(b"world", 5, 5)  # out of order, as parallel uploaders send them
    with pytest.raises(HttpResponseError) as caught:
        f.flush_data(10)  # [0, 5) is missing
    assert error_code(caught.value) == "InvalidFlushPosition"
    f.append_data(b"hello", 0, 5)
    f.append_data(b"hello", 0, 5)  # a retried append at the same position is harmless
    f.flush_data(10)
    assert f.download_file().readall() == b"helloworld"
    f.append_data(b"!", 10, 1)
    with pytest.raises(HttpResponseError) as caught:
        f.flush_data(5)  # below the committed length
    assert error_code(caught.value) == "InvalidFlushPosition"
    f.flush_data(11)
    assert f.download_file(offset=5, length=6).readall() == b"world!"
    fs.close()


def test_conditions_rename_and_delete(dfs_emulator: Any) -> None:
    fs = filesystem(dfs_emulator)
    f = fs.get_file_client("d1/x.bin")
    f.upload_data(b"x", overwrite=True)
    with pytest.raises(ResourceExistsError):  # an existing file, and no overwrite asked for
        f.upload_data(b"y")
    request = urllib.request.Request(
        f"{dfs_emulator.account_url()}/fs/d1/x.bin?resource=file&{SAS}",
        method="PUT",
        headers={"If-None-Match": "*"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert (refused.value.code, refused.value.headers["x-ms-error-code"]) == (
        409, "PathAlreadyExists",
    )  # fmt: skip
    refused.value.close()
    fs.get_directory_client("d1").rename_directory("fs/d2")  # a whole directory moves
    assert [p.name for p in fs.get_paths()] == ["d2", "d2/x.bin"]
    with pytest.raises(ResourceNotFoundError):
        fs.get_file_client("nowhere/x").rename_file("fs/d2/y.bin")
    with pytest.raises(HttpResponseError) as caught:
        fs.get_file_client("d2/x.bin").rename_file("fs/missing-parent/y.bin")
    assert error_code(caught.value) == "RenameDestinationParentPathNotFound"
    fs.get_directory_client("d2").delete_directory()
    assert list(fs.get_paths()) == []
    fs.close()


def test_listing_pages_with_a_continuation(dfs_emulator: Any) -> None:
    fs = filesystem(dfs_emulator)
    for i in range(7):
        fs.get_file_client(f"dir/f{i}.bin").upload_data(b"x", overwrite=True)
    pages = list(fs.get_paths(path="dir", max_results=3).by_page())
    assert [len(list(page)) for page in pages] == [3, 3, 1]
    assert dfs_emulator.stats()["ok"]["list_paths"] == 3
    fs.close()


def test_the_control_endpoint_faults_a_client_in_another_process(dfs_emulator: Any) -> None:
    control = RemoteControl(dfs_emulator.url)
    control.storm(status=503, seconds=30, retry_after=2, ops=["create_filesystem"])
    state = json.loads(urllib.request.urlopen(f"{dfs_emulator.url}/_emulator/faults").read())
    assert state["storm"]["status"] == 503
    client = DataLakeServiceClient(dfs_emulator.account_url(), credential=SAS, retry_total=0)
    with pytest.raises(HttpResponseError) as caught:
        client.create_file_system("x")
    assert caught.value.status_code == 503
    response = caught.value.response
    assert isinstance(response, LegacyHttpResponse | HttpResponse), type(response)
    assert response.headers["Retry-After"] == "2"
    control.reset()
    client.create_file_system("x")
    stats = control.stats()
    assert stats["ops"]["create_filesystem"] == 2
    assert stats["faults"] == {"status_503": 1}
    control.reset_stats()
    assert control.stats()["requests"] == 0
    client.close()


@pytest.mark.slow
def test_runs_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(TOOLS / "dfs_emulator.py"), "--port", "0", "--root",
         str(tmp_path / "state"), "--filesystem", "landing"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        account_url = proc.stdout.readline().strip()
        assert account_url.endswith("/devstoreaccount1")
        fs = DataLakeServiceClient(account_url, credential=SAS).get_file_system_client("landing")
        fs.get_file_client("hello.txt").upload_data(b"hi", overwrite=True)
        files = json.loads(
            urllib.request.urlopen(
                account_url.rsplit("/", 1)[0] + "/_emulator/files?filesystem=landing&sha256=1"
            ).read()
        )
        assert files["hello.txt"]["size"] == 2
        fs.close()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def blob_container(emulator: Any, name: str = "fs") -> ContainerClient:
    """azure-storage-blob's client on the emulator (its Blob calls share the one port)."""
    with filesystem(emulator, name):
        pass
    return ContainerClient(emulator.account_url(), name, credential=SAS)


def test_put_blob_is_whole_at_once_with_parents_and_md5_checked(dfs_emulator: Any) -> None:
    with blob_container(dfs_emulator) as container:
        blob = container.get_blob_client("a/b/put.bin")
        blob.upload_blob(b"x" * 1000, metadata={"k": "v"}, validate_content=True)
        assert dfs_emulator.files("fs")["a/b/put.bin"]["metadata"] == {"k": "v"}
        blob.upload_blob(b"second", overwrite=True, metadata={"k": "w"})
        with pytest.raises(ResourceExistsError):  # overwrite=False: If-None-Match *
            blob.upload_blob(b"third")
        assert blob.download_blob().readall() == b"second"
        props = blob.get_blob_properties()
        assert (props.size, props.metadata) == (6, {"k": "w"})
        with pytest.raises(ResourceExistsError):  # a directory is in the way
            container.get_blob_client("a/b").upload_blob(b"z", overwrite=True)
    with filesystem(dfs_emulator) as fs:
        directory = fs.get_directory_client("a/b").get_directory_properties()
    assert directory.metadata["hdi_isfolder"] == "true"
    stats = dfs_emulator.stats()
    assert stats["md5_checked"] == 1  # the one upload with validate_content
    # a body that does not match its Content-MD5 is refused, and nothing changes
    request = urllib.request.Request(
        f"{dfs_emulator.account_url()}/fs/a/b/put.bin?{SAS}", data=b"corrupt", method="PUT",
        headers={"x-ms-blob-type": "BlockBlob", "Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    with caught.value:
        assert caught.value.headers["x-ms-error-code"] == "Md5Mismatch"
    assert dfs_emulator.read_file("fs", "a/b/put.bin") == b"second"


def test_blocks_are_invisible_until_the_block_list(tmp_path: Path) -> None:
    root = tmp_path / "state"
    with dfs_tool.serve(root) as emulator, blob_container(emulator) as container:
        blob = container.get_blob_client("big/file.bin")
        blob.stage_block("b-0", b"hello ", validate_content=True)
        blob.stage_block("b-1", b"world", validate_content=True)
        blob.stage_block("b-0", b"HELLO ")  # staged again: the later one counts
        assert "big/file.bin" not in emulator.files("fs")
        with pytest.raises(ResourceNotFoundError):
            blob.get_blob_properties()
        with pytest.raises(HttpResponseError) as caught:
            blob.commit_block_list([BlobBlock("b-0"), BlobBlock("b-9")])
        assert error_code(caught.value) == "InvalidBlockList"
    with dfs_tool.serve(root) as emulator, blob_container(emulator) as container:
        blob = container.get_blob_client("big/file.bin")  # staged blocks survive a restart
        blob.commit_block_list([BlobBlock("b-0"), BlobBlock("b-1")], metadata={"k": "v"})
        assert blob.download_blob().readall() == b"HELLO world"
        assert emulator.files("fs")["big/file.bin"]["metadata"] == {"k": "v"}
        with emulator.store.lock:
            left = emulator.store.db.execute("SELECT count(*) FROM blocks").fetchone()[0]
        assert left == 0  # committed or not, a path's blocks go with its block list
        assert sorted(p.name for p in (root / "staging").iterdir()) == []
