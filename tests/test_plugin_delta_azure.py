"""The ``delta`` inventory on Azure: credentials → storage options, and Delta tables on Azurite.

Azurite runs deltalake only in emulator mode (``credential = "emulator"`` plus
``AZURITE_BLOB_STORAGE_URL`` without the account path); see ``lakeferry_delta.credentials``.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from deltalake import DeltaTable

from helpers.delta import Clock, event_row, inventory_row, operations
from lakeferry.api import ConfigError, PluginContext, TransientError
from lakeferry_delta import DeltaInventory, DeltaSettings
from lakeferry_delta.credentials import StorageOptions, display_uri, scrub, storage_options_for
from lakeferry_delta.maintenance import COMPACTION_APP_ID

LOGGER = logging.getLogger("test.delta.azure")
ADLS = "abfss://lake@myaccount.dfs.core.windows.net/lakeferry/inventory"
ONELAKE = "abfss://Sales@onelake.dfs.fabric.microsoft.com/Landing.Lakehouse/Tables/inventory"
ONELAKE_GUIDS = (
    "abfss://4f0c1a2b-1111-2222-3333-444455556666@onelake.dfs.fabric.microsoft.com/"
    "9e8d7c6b-aaaa-bbbb-cccc-ddddeeeeffff/Tables/inventory"
)
SP_ENV = {"AZURE_TENANT_ID": "tenant-1", "AZURE_CLIENT_ID": "client-1", "AZURE_CLIENT_SECRET": "s3"}


def options(uri: str, environ: dict[str, str] | None = None, **settings: Any) -> dict[str, str]:
    return resolve(uri, environ, **settings).options


def resolve(uri: str, environ: dict[str, str] | None = None, **settings: Any) -> StorageOptions:
    config = DeltaSettings(inventory_uri=uri, events_uri=uri, **settings)
    return storage_options_for(
        config, uri, setting="inventory.inventory_uri", logger=LOGGER, environ=environ or {}
    )


# -- credentials -> storage options ------------------------------------------------------------


def test_local_paths_take_only_the_explicit_options(tmp_path: Path) -> None:
    assert options(str(tmp_path / "t"), credential="service_principal") == {}
    given = {"aws_access_key_id": "AKIA", "aws_secret_access_key": "hush", "region": "eu"}
    resolved = resolve("s3://bucket/t", storage_options=given)
    assert resolved.options == given
    assert set(resolved.secrets) == {"AKIA", "hush"}


def test_default_leaves_the_credential_to_object_store() -> None:
    assert options(ADLS) == {}
    assert options("az://lake/inventory", account_name="myaccount") == {
        "azure_storage_account_name": "myaccount"
    }
    assert options(ONELAKE) == {"azure_use_fabric_endpoint": "true"}
    assert options(ONELAKE_GUIDS) == {"azure_use_fabric_endpoint": "true"}
    assert options("https://onelake.dfs.fabric.microsoft.com/Sales/L.Lakehouse/Tables/t") == {
        "azure_use_fabric_endpoint": "true"
    }


def test_service_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve(ONELAKE, SP_ENV, credential="service_principal") == (
        {
            "azure_tenant_id": "tenant-1",
            "azure_client_id": "client-1",
            "azure_client_secret": "s3",
            "azure_use_fabric_endpoint": "true",
        },
        ("s3",),
    )
    named = {"T": "t2", "C": "c2", "S": "s4"}
    assert options(
        ADLS,
        named,
        credential="service_principal",
        tenant_id_env="T",
        client_id_env="C",
        client_secret_env="S",
    ) == {"azure_tenant_id": "t2", "azure_client_id": "c2", "azure_client_secret": "s4"}


@pytest.mark.parametrize(
    ("missing", "key"),
    [
        ("AZURE_TENANT_ID", "inventory.tenant_id_env"),
        ("AZURE_CLIENT_ID", "inventory.client_id_env"),
        ("AZURE_CLIENT_SECRET", "inventory.client_secret_env"),
    ],
)
def test_a_missing_environment_variable_is_a_config_error(missing: str, key: str) -> None:
    environ = {k: v for k, v in SP_ENV.items() if k != missing}
    with pytest.raises(ConfigError, match=f"environment variable {missing} is not set") as caught:
        options(ADLS, environ, credential="service_principal")
    assert caught.value.key == key
    for secret in SP_ENV.values():
        assert secret not in str(caught.value)


def test_managed_identity_sas_account_key_emulator_none() -> None:
    assert options(ADLS, credential="managed_identity") == {}
    assert options(ADLS, {"AZURE_CLIENT_ID": "uami-1"}, credential="managed_identity") == {
        "azure_client_id": "uami-1"
    }
    sas = "sv=2022-11-02&ss=b&sig=abc%2Fdef"
    assert resolve(ADLS, {"LAKEFERRY_DELTA_SAS": "?" + sas + "\n"}, credential="sas") == (
        {"azure_storage_sas_key": sas},
        (sas,),
    )
    assert options(ONELAKE, {"TOKEN": sas}, credential="sas", sas_token_env="TOKEN") == {
        "azure_storage_sas_key": sas,
        "azure_use_fabric_endpoint": "true",
    }
    assert options(ADLS, {"LAKEFERRY_DELTA_ACCOUNT_KEY": "a2V5"}, credential="account_key") == {
        "azure_storage_account_key": "a2V5"
    }
    assert options(ADLS, credential="emulator") == {"azure_storage_use_emulator": "true"}
    assert options(ADLS, credential="none") == {"azure_skip_signature": "true"}
    with pytest.raises(ConfigError, match=r"environment variable LAKEFERRY_DELTA_SAS"):
        options(ADLS, credential="sas")
    with pytest.raises(ConfigError, match="no 'sig=' field") as caught:
        options(ADLS, {"LAKEFERRY_DELTA_SAS": "sv=2022-11-02&sp=r"}, credential="sas")
    assert caught.value.key == "inventory.sas_token_env"
    with pytest.raises(ConfigError, match="account_key_env"):
        options(ADLS, {"K": " "}, credential="account_key", account_key_env="K")  # blank = unset


def test_explicit_storage_options_win() -> None:
    got = options(
        ADLS,
        SP_ENV,
        credential="service_principal",
        storage_options={"azure_client_id": "override", "timeout": "120s"},
    )
    assert got["azure_client_id"] == "override"
    assert got["timeout"] == "120s"
    assert got["azure_client_secret"] == "s3"


def test_a_credential_file_wins_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "lakeferry-sp").write_text("from-file\n")
    environ = {**SP_ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    got = options(ADLS, environ, credential="service_principal", credential_file="lakeferry-sp")
    assert got["azure_client_secret"] == "from-file"
    assert got["azure_tenant_id"] == "tenant-1"  # ids are no secrets: still the environment
    (tmp_path / "sas").write_text("?sv=1&sig=x")
    assert options(ADLS, environ, credential="sas", credential_file="sas") == {
        "azure_storage_sas_key": "sv=1&sig=x"
    }
    (tmp_path / "key").write_text("a2V5")
    assert options(
        ADLS, SP_ENV, credential="account_key", credential_file=str(tmp_path / "key")
    ) == {"azure_storage_account_key": "a2V5"}

    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY") as caught:
        options(ADLS, SP_ENV, credential="service_principal", credential_file="x")
    assert caught.value.key == "inventory.credential_file"
    with pytest.raises(ConfigError, match="cannot read credential"):
        options(ADLS, environ, credential="sas", credential_file="absent")
    with pytest.raises(ConfigError, match="must be a credential name"):
        options(ADLS, environ, credential="sas", credential_file="../etc/passwd")


def test_combinations_that_cannot_work_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="OneLake takes no account keys"):
        options(ONELAKE, {"LAKEFERRY_DELTA_ACCOUNT_KEY": "k"}, credential="account_key")
    with pytest.raises(ConfigError, match="no emulator for OneLake"):
        options(ONELAKE, credential="emulator")
    with pytest.raises(ConfigError, match="account_name"):
        options("az://lake/t", {"LAKEFERRY_DELTA_ACCOUNT_KEY": "k"}, credential="account_key")
    with pytest.raises(ConfigError, match="without the account path") as caught:
        options(
            ADLS,
            {"AZURITE_BLOB_STORAGE_URL": "http://127.0.0.1:10000/devstoreaccount1"},
            credential="emulator",
        )
    assert caught.value.key == "inventory.credential"
    with pytest.raises(ConfigError, match="names its workspace") as caught:
        options("abfss://onelake.dfs.fabric.microsoft.com/L.Lakehouse/Tables/t")
    assert caught.value.key == "inventory.inventory_uri"


def test_a_onelake_table_outside_tables_gets_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        options(ONELAKE)
        options(ONELAKE_GUIDS)
        assert caplog.text == ""
        options("abfss://Sales@onelake.dfs.fabric.microsoft.com/Landing.Lakehouse/Files/inv")
    assert "does not show up among the lakehouse's tables" in caplog.text


def test_the_inventory_refuses_to_start_without_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("AZURE_TENANT_ID", "t")
    monkeypatch.setenv("AZURE_CLIENT_ID", "c")
    settings = DeltaSettings(
        inventory_uri=ADLS, events_uri=str(tmp_path / "events"), credential="service_principal"
    )
    context = PluginContext(state_dir=tmp_path, logger=LOGGER)
    with pytest.raises(ConfigError, match="AZURE_CLIENT_SECRET") as caught:
        DeltaInventory(settings, context)
    assert caught.value.key == "inventory.client_secret_env"


def test_logs_and_errors_lose_secrets() -> None:
    assert display_uri(ONELAKE) == ONELAKE  # the workspace is no secret
    assert display_uri("https://a.blob.core.windows.net/c/t?sv=1&sig=x") == (
        "https://a.blob.core.windows.net/c/t?<redacted>"
    )
    text = "GET https://a.blob.core.windows.net/c?comp=list&sig=abc failed; key=hunter2 bad"
    assert scrub(text, ("hunter2",)) == (
        "GET https://a.blob.core.windows.net/c?<redacted> failed; key=<redacted> bad"
    )


# -- on Azurite ----------------------------------------------------------------------------------


@pytest.fixture
def container(azurite: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh container, and the environment deltalake's emulator mode reads."""
    # object_store appends the account itself: the URL must not carry /devstoreaccount1.
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", f"http://127.0.0.1:{azurite.port}")
    name = f"lf{uuid.uuid4().hex[:16]}"
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(name)
    yield name
    service.delete_container(name)


def azure_inventory(name: str, clock: Clock, **overrides: Any) -> DeltaInventory:
    base = f"abfss://{name}@devstoreaccount1.dfs.core.windows.net"
    settings = DeltaSettings(
        inventory_uri=f"{base}/lakeferry/inventory",
        events_uri=f"{base}/lakeferry/events",
        **{"credential": "emulator", **overrides},
    )
    context = PluginContext(state_dir=Path("/nonexistent"), logger=LOGGER)
    return DeltaInventory(settings, context, clock=clock)


def data_blobs(azurite: Any, name: str, table: str) -> int:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs = service.get_container_client(name).list_blobs(name_starts_with=f"lakeferry/{table}/")
    return sum(1 for b in blobs if b.name.endswith(".parquet") and "/_delta_log/" not in b.name)


async def test_tables_on_azurite_take_commits_compaction_and_a_restart(
    azurite: Any, container: str
) -> None:
    clock = Clock()
    inventory = azure_inventory(
        container, clock, vacuum_retention=0.0, vacuum_enforce_retention=False
    )
    commits = 55
    append_s: list[float] = []
    events_s: list[float] = []
    with trio.fail_after(60):
        for i in range(commits):
            rows = [inventory_row(2 * i), inventory_row(2 * i + 1)]
            began = time.perf_counter()
            await inventory.append(rows, {"g:downloads.results:0": i, "g:downloads.results:1": i})
            append_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            await inventory.append_events([event_row(2 * i), event_row(2 * i + 1)])
            events_s.append(time.perf_counter() - began)
        assert data_blobs(azurite, container, "inventory") == commits

        began = time.perf_counter()
        await inventory.maintain()  # > 50 small files: compaction; then vacuum (retention 0)
        maintain_s = time.perf_counter() - began

        assert data_blobs(azurite, container, "inventory") == 1
        assert data_blobs(azurite, container, "events") == 1
        expected = sorted(inventory_row(i) for i in range(2 * commits))
        assert sorted(await inventory.read_inventory()) == expected
        assert sorted(await inventory.read_events()) == sorted(
            event_row(i) for i in range(2 * commits)
        )
        app_ids = ["g:downloads.results:0", "g:downloads.results:1", "g:downloads.results:2"]
        assert await inventory.transaction_versions(app_ids) == {
            app_ids[0]: commits - 1,
            app_ids[1]: commits - 1,
        }
        await inventory.aclose()

        restarted = azure_inventory(container, clock)
        assert await restarted.transaction_versions(app_ids) == {
            app_ids[0]: commits - 1,
            app_ids[1]: commits - 1,
        }
        assert sorted(await restarted.read_inventory()) == expected
        await restarted.append([inventory_row(1000)], {app_ids[0]: commits})
        assert len(await restarted.landed_ids()) == 2 * commits + 1

    base = f"abfss://{container}@devstoreaccount1.dfs.core.windows.net/lakeferry/inventory"
    table = DeltaTable(base, storage_options={"azure_storage_use_emulator": "true"})
    assert table.transaction_version(COMPACTION_APP_ID) == int(clock.now * 1000)
    assert {"OPTIMIZE", "VACUUM END"} <= set(operations(table))
    print(
        f"\nAzurite, {commits} commits per table: inventory append "
        f"p50 {statistics.median(append_s) * 1000:.1f} ms, "
        f"max {max(append_s) * 1000:.1f} ms; events append "
        f"p50 {statistics.median(events_s) * 1000:.1f} ms, max {max(events_s) * 1000:.1f} ms; "
        f"maintain (compaction + vacuum, 2 tables) {maintain_s:.2f} s"
    )


async def test_a_sas_token_works_and_stays_secret(
    azurite: Any, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sas mapping against the real object_store (emulator mode for the endpoint only).
    sas = generate_container_sas(
        "devstoreaccount1",
        container,
        account_key=azurite.connection_string.split("AccountKey=")[1].split(";")[0],
        permission=ContainerSasPermissions(
            read=True, add=True, create=True, write=True, delete=True, list=True
        ),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    (tmp_path / "sas").write_text(f"?{sas}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    emulator_endpoint = {"azure_storage_use_emulator": "true"}
    inventory = azure_inventory(
        container,
        Clock(),
        credential="sas",
        credential_file="sas",
        storage_options=emulator_endpoint,
    )
    monkeypatch.setenv("WRONG_SAS", sas.replace("sig=", "sig=AAAA"))
    wrong = azure_inventory(
        container,
        Clock(),
        credential="sas",
        sas_token_env="WRONG_SAS",
        storage_options=emulator_endpoint,
    )
    with trio.fail_after(30):
        await inventory.append([inventory_row(1)], {"p": 1})
        assert await inventory.landed_ids() == {"ev-1"}
        with pytest.raises(TransientError) as caught:
            await wrong.landed_ids()
    signature = sas.split("sig=")[1].split("&")[0]
    assert signature not in str(caught.value)
    assert "AAAA" not in str(caught.value)


async def test_the_delta_source_reads_a_table_on_azurite_by_version(
    azurite: Any, container: str, tmp_path: Path
) -> None:
    """The ``delta`` source on ``abfss://`` (Azurite, emulator credentials): the rows written
    there as events, then only the rows of a later version."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from lakeferry.testing import RecordingIntake
    from lakeferry_delta import DeltaSource, DeltaSourceSettings

    uri = f"abfss://{container}@devstoreaccount1.dfs.core.windows.net/old/retries"
    storage = storage_options_for(
        DeltaSettings(inventory_uri=uri, events_uri=uri, credential="emulator"), uri,
        setting="inventory.inventory_uri", logger=LOGGER,
    ).options  # fmt: skip

    def append(ids: range) -> None:
        rows = pa.table({"id": [f"r{i}" for i in ids], "url": [f"https://h/{i}" for i in ids]})
        write_deltalake(uri, rows, mode="append", storage_options=storage)

    settings = DeltaSourceSettings(
        table_uri=uri, credential="emulator", columns={"url": "url"}, follow=False, batch_rows=2
    )
    context = PluginContext(state_dir=tmp_path, logger=LOGGER)
    append(range(3))
    for expected in (["r0", "r1", "r2"], ["r3", "r4"]):
        intake = RecordingIntake()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(DeltaSource(settings, context).run, intake)
        assert [e.data for e in intake.events] == [
            b'{"id": "%s", "url": "https://h/%s"}' % (i.encode(), i[1:].encode()) for i in expected
        ]
        append(range(3, 5))
