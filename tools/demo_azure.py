"""The Azure path of ``make demo AZURE=1``, on local servers: Event Hubs (AMQP emulator) as the
source, the DFS emulator as the OneLake sink, Azurite for the checkpoint store and the Delta
tables (deltalake's emulator mode). The real Azure SDKs and deltalake talk to all three.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dfs_emulator
import eventhubs_emulator
from azure.eventhub import EventData, EventHubProducerClient
from azure.storage.blob import BlobServiceClient
from azurite import azurite as azurite_tool

HUB = "files"
WORKSPACE = "Demo Workspace"
BASE = "Landing.Lakehouse/Files/landing"
CONTAINER = "lakehouse"
ENV_EVENTHUB = "LAKEFERRY_DEMO_EVENTHUB"
ENV_BLOB = "LAKEFERRY_DEMO_BLOB"
ENV_ACCOUNT_KEY = "LAKEFERRY_ONELAKE_ACCOUNT_KEY"


@dataclass
class AzureServices:
    azurite: Any
    eventhubs: Any
    dfs: Any

    def configure(self, data: dict[str, Any]) -> None:
        """Point a harness config at the emulators (secrets stay in the environment)."""
        data["sources"] = [
            {
                "kind": "eventhub",
                "eventhub_name": HUB,
                "connection_string_env": ENV_EVENTHUB,
                "checkpoint_connection_string_env": ENV_BLOB,
                "checkpoint_container": "checkpoints",
                "create_checkpoint_container": True,
                "load_balancing_interval": "1s",
            }
        ]
        data["sink"] = {
            "kind": "onelake",
            "account_url": self.dfs.account_url(),
            "filesystem": WORKSPACE,
            "base_path": BASE,
            "path_template": "{date:%Y/%m/%d}/{event.id}/{filename}",
            "credential": "account_key",
            "create_filesystem": True,
        }
        base = f"abfss://{CONTAINER}@{azurite_tool.ACCOUNT}.dfs.core.windows.net"
        data["inventory"] = {
            "kind": "delta",
            "inventory_uri": f"{base}/Tables/lakeferry_inventory",
            "events_uri": f"{base}/Tables/lakeferry_events",
            "credential": "emulator",
        }

    def send(self, lines: Sequence[bytes], progress: Any = None) -> None:
        """Publish raw events to the Event Hub, as a producer in Azure would."""
        producer = EventHubProducerClient.from_connection_string(
            self.eventhubs.connection_string_for(HUB)
        )
        with producer:
            batch = producer.create_batch()
            for line in lines:
                try:
                    batch.add(EventData(line))
                except ValueError:  # full: send it and start the next
                    producer.send_batch(batch)
                    if progress is not None:
                        progress(len(batch))
                    batch = producer.create_batch()
                    batch.add(EventData(line))
            if len(batch):
                producer.send_batch(batch)
                if progress is not None:
                    progress(len(batch))

    def read_sink(self, destination: str) -> bytes:
        data: bytes = self.dfs.read_file(WORKSPACE, f"{BASE}/{destination}")
        return data


@contextlib.contextmanager
def azure_services(workdir: Path) -> Iterator[AzureServices]:
    """Start the three servers, export what the daemon needs, stop them afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    azurite = azurite_tool.start(azurite_tool.free_port(), workdir / "azurite")
    eventhubs = eventhubs_emulator.start(0, hub=HUB, partitions=4)
    try:
        with dfs_emulator.serve(workdir / "dfs") as dfs:
            BlobServiceClient.from_connection_string(azurite.connection_string).create_container(
                CONTAINER
            )
            os.environ.update(
                {
                    ENV_EVENTHUB: eventhubs.connection_string_for(HUB),
                    ENV_BLOB: azurite.connection_string,
                    ENV_ACCOUNT_KEY: azurite_tool.KEY,
                    # deltalake's emulator mode: the Blob endpoint without the account path
                    "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{azurite.port}",
                }
            )
            endpoint = eventhubs.connection_string_for(HUB).split(";")[0]
            print(f"Azure on local servers: Event Hubs emulator {endpoint}, ")
            print(f"  DFS emulator {dfs.account_url()}, Azurite {azurite.blob_url}")
            yield AzureServices(azurite, eventhubs, dfs)
    finally:
        eventhubs.stop()
        azurite.stop()
