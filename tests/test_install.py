"""``make install`` prints no setuptools warnings.

Found: every ``make install`` printed setuptools' "Editable installation ... Please be careful
with folders in your working directory" notice, noise that teaches operators to skip warnings.
The Makefile's pip calls run with ``QUIET_PIP``; this installs the project the way they do, into
a scratch virtualenv, with and without it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

# The test here builds a venv and installs lakeferry into it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _quiet_pip() -> dict[str, str]:
    """The environment the Makefile's ``QUIET_PIP := NAME="VALUE"`` sets."""
    match = re.search(r"^QUIET_PIP\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "the Makefile defines QUIET_PIP"
    name, _, value = shlex.split(match.group(1))[0].partition("=")
    return {name: value}


def test_the_editable_install_prints_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    python = str(venv / "bin" / "python")
    # As the Makefile does: a current pip (the one ensurepip brings hides the build's output).
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        check=True, timeout=600, env=environ,
    )  # fmt: skip

    def install(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        # The Makefile's command, without dependencies (the point is the build's own output).
        return subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)],
            capture_output=True, text=True, timeout=600, env=environ | extra, cwd=tmp_path,
        )  # fmt: skip

    noisy = install({})
    assert noisy.returncode == 0, noisy.stderr
    assert "Editable installation" in noisy.stderr  # what an operator used to see
    quiet = install(_quiet_pip())
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout + quiet.stderr).strip() == ""
