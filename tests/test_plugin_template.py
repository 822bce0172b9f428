"""``lakeferry plugin new``: the template makes a package that installs, passes the conformance
kit, and is picked up through its entry point with no change to lakeferry.

The slow test follows an author: generate a ``mem`` downloader, replace the toy body (the one
part the author must write, well under 100 lines), install the package — not editable, with
``--no-deps`` — into a fresh virtual environment that sees this checkout's environment through a
``.pth`` file (nothing is downloaded but the build backend), run the package's own tests there,
and ask that environment's ``lakeferry plugins``. The checkout's environment never sees it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from lakeferry import plugin_template

ROOT = Path(__file__).resolve().parents[1]

AUTHORS_BODY = '''\
async def toy_body(name: str, size: int) -> AsyncGenerator[bytes, None]:
    """mem:// bodies: byte i is (i + len(name)) mod 251, in CHUNK_SIZE pieces."""
    pattern = bytes((i + len(name)) % 251 for i in range(251 * 64))
    sent = 0
    while sent < size:
        await trio.lowlevel.checkpoint()
        piece = min(CHUNK_SIZE, size - sent)
        start = sent % 251
        chunk = (pattern[start:] + pattern * (piece // len(pattern) + 2))[:piece]
        sent += piece
        yield chunk
'''


def lakeferry(*args: str, python: str = sys.executable, cwd: Path = ROOT) -> str:
    out = subprocess.run(
        [python, "-m", "lakeferry", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def replace_toy_body(module: Path) -> int:
    """The author's change: a new ``toy_body``. Returns the lines changed."""
    text = module.read_text()
    start = text.index("async def toy_body(")
    end = text.index("\nclass ", start)
    module.write_text(text[:start] + AUTHORS_BODY + "\n" + text[end:])
    return len(AUTHORS_BODY.splitlines())


@pytest.mark.parametrize("kind", plugin_template.KINDS)
def test_every_kind_renders_a_complete_package(kind: plugin_template.Kind) -> None:
    files = plugin_template.render("acme-x", kind)
    assert set(files) == {
        "pyproject.toml",
        "README.md",
        "lakeferry_acme_x/__init__.py",
        f"lakeferry_acme_x/{kind}.py",
        "lakeferry_acme_x/py.typed",
        "tests/test_lakeferry_acme_x.py",
    }
    assert (
        '[project.entry-points.lakeferry]\nacme-x = "lakeferry_acme_x"' in files["pyproject.toml"]
    )
    assert 'dependencies = ["lakeferry>=0.1"]' in files["pyproject.toml"]
    text = "".join(files.values())
    assert re.findall(r"__[A-Z_]+__", text) == [], "a template token was left unfilled"
    assert "TODO" in files[f"lakeferry_acme_x/{kind}.py"]
    core = re.findall(r"^(?:from|import) (lakeferry(?:\.\w+)*)\b(?!_)", text, re.M)
    assert set(core) <= {"lakeferry.api", "lakeferry.testing"}, core


@pytest.mark.slow
def test_bad_names_and_existing_directories_are_refused(tmp_path: Path) -> None:
    for bad in ("Acme", "1acme", "acme!", "acme--x", ""):
        out = subprocess.run(
            [sys.executable, "-m", "lakeferry", "plugin", "new", bad, "--kind", "sink"],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, bad
    lakeferry("plugin", "new", "acme", "--kind", "sink", "--dir", str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "lakeferry", "plugin", "new", "acme", "--kind", "sink",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "already exists" in out.stderr


@pytest.mark.slow
def test_a_generated_downloader_installs_passes_the_kit_and_is_listed(tmp_path: Path) -> None:
    lakeferry("plugin", "new", "mem", "--kind", "downloader", "--dir", str(tmp_path))
    package = tmp_path / "lakeferry-mem"
    assert replace_toy_body(package / "lakeferry_mem" / "downloader.py") < 100

    venv = tmp_path / "venv"
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = str(venv / "bin" / "python")
        site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        # lakeferry and its dependencies, from this checkout's environment, without copying them.
        ours = sysconfig.get_paths()["purelib"]
        Path(site, "lakeferry_checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        install = subprocess.run(
            [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
             str(package)],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout + install.stderr

        tests = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
             str(package / "pyproject.toml"), str(package / "tests")],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
        )  # fmt: skip
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert "7 passed" in tests.stdout, tests.stdout

        listed = _json_lines(lakeferry("plugins", "--json", python=python, cwd=tmp_path))
        mem = next(p for p in listed if p["name"] == "mem")
        assert (mem["distribution"], mem["version"], mem["module"]) == (
            "lakeferry-mem", "0.1.0", "lakeferry_mem",
        )  # fmt: skip
        assert mem["provides"] == ["downloader:mem (mem)"]
        assert "mem" not in {p["name"] for p in _json_lines(lakeferry("plugins", "--json"))}
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(package, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cache", "sink"])
def test_the_generated_cache_and_sink_pass_their_kits(tmp_path: Path, kind: str) -> None:
    """The templates follow the protocols as they are now (a cache's reservation grows, a
    sink keeps its temporary files in its owner's staging folder and lists its files)."""
    lakeferry("plugin", "new", "toy", "--kind", kind, "--dir", str(tmp_path))
    package = tmp_path / "lakeferry-toy"
    env = {**os.environ, "PYTHONPATH": str(package)}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(package / "pyproject.toml"), str(package / "tests")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout
    assert "failed" not in tests.stdout


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]
