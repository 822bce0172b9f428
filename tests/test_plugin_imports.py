"""Loading the plugins imports none of the heavy libraries; building a component does.

Every process loads every built-in plugin (entry points), so a plugin package imports only its
settings; its implementation, and the library behind it, is imported when its factory is
called or one of its lazy names is read. Each check runs in a fresh interpreter: this one has
imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Every test here imports plugins in a fresh interpreter (a subprocess).
pytestmark = pytest.mark.slow

HEAVY = (
    "deltalake",
    "pyarrow",
    "azure.storage.filedatalake",
    "azure.eventhub",
    "paramiko",
    "pycurl",
)

LOAD = """
import json, logging, sys
from pathlib import Path

import msgspec

from lakeferry.api import PluginContext
from lakeferry.registry import load_registry
from lakeferry.units import dec_hook

registry = load_registry()
assert not registry.failed, registry.failed
HEAVY = {heavy!r}
tmp = Path({tmp!r})
before = [m for m in HEAVY if m in sys.modules]


def build(component, kind, **settings):
    reg = registry.get(component, kind)
    typed = msgspec.convert(settings, reg.settings_type, dec_hook=dec_hook)
    return reg.factory(typed, PluginContext(tmp, logging.getLogger(kind)))

"""

REPORT = """
print(json.dumps([before, [m for m in HEAVY if m in sys.modules]]))
"""


def heavy_modules(tmp_path: Path, code: str) -> tuple[list[str], list[str]]:
    """The heavy modules imported after loading the registry, and after ``code`` too."""
    script = LOAD.format(heavy=HEAVY, tmp=str(tmp_path)) + textwrap.dedent(code) + REPORT
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout.splitlines()[-1])
    return before, after


def test_loading_the_plugins_imports_no_heavy_library(tmp_path: Path) -> None:
    code = """
    kinds = {reg.kind for reg in registry.registrations()}
    assert {"delta", "onelake", "eventhub", "sftp"} <= kinds, kinds
    for kind in registry.kinds("downloader"):  # the config decodes every downloader's defaults
        msgspec.convert({}, registry.get("downloader", kind).settings_type, dec_hook=dec_hook)
    """
    assert heavy_modules(tmp_path, code) == ([], [])


@pytest.mark.parametrize(
    ("code", "heavy"),
    [
        pytest.param(
            "build('inventory', 'delta', inventory_uri=f'{tmp}/i', events_uri=f'{tmp}/e')",
            ["deltalake", "pyarrow"],
            id="delta-factory",
        ),
        pytest.param(
            "from lakeferry_delta import ConflictingTransactions",
            ["deltalake", "pyarrow"],
            id="delta-attribute",
        ),
        pytest.param(
            "build('sink', 'onelake', filesystem='ws', credential='sas',"
            " secret_in_config='sv=x&sig=y')",
            ["azure.storage.filedatalake"],
            id="onelake-factory",
        ),
        pytest.param(
            "import lakeferry_onelake; lakeferry_onelake.OneLakeSink",
            ["azure.storage.filedatalake"],
            id="onelake-attribute",
        ),
        pytest.param(
            "build('source', 'eventhub', eventhub_name='hub', fully_qualified_namespace='ns.x',"
            " checkpoint_blob_url='https://acct.blob.x', checkpoint_container='cp')",
            ["azure.eventhub"],
            id="eventhub-factory",
        ),
        pytest.param(
            "from lakeferry_eventhub import EventHubSource",
            ["azure.eventhub"],
            id="eventhub-attribute",
        ),
        pytest.param("build('downloader', 'sftp')", ["paramiko"], id="sftp-factory"),
        pytest.param("build('downloader', 'http', engine='curl')", ["pycurl"], id="curl-engine"),
        pytest.param(
            "import lakeferry_sftp; lakeferry_sftp.SftpDownloader",
            ["paramiko"],
            id="sftp-attribute",
        ),
    ],
)
def test_building_a_component_imports_its_library(
    tmp_path: Path, code: str, heavy: list[str]
) -> None:
    before, after = heavy_modules(tmp_path, code)
    assert before == []
    assert set(heavy) <= set(after)
