"""``lakeferry plugin new``: the template makes a package that installs, passes the conformance
kit, and is picked up through its entry point with no change to lakeferry.

The slow test follows an author: generate a ``mem`` downloader and an ``inbox`` source, make
the change an author makes first (a new toy body; acknowledged messages kept aside), install
both — not editable, with ``--no-deps`` — into a fresh virtual environment that sees this
checkout's environment through a ``.pth`` file (nothing is downloaded but the build backend),
run each package's own tests there, ask that environment's ``lakeferry plugins``, and check the
source README's configuration with ``lakeferry check-config``. The checkout's environment never
sees them. Every kind's package also meets its own ruff and mypy (strict) settings.
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


AUTHORS_ACKNOWLEDGE = '''\
    def _acknowledge(self, batch: list[Message]) -> None:
        """Keep what was received: move it into the folder's ``.done/``."""
        done = self._folder / ".done"
        done.mkdir(exist_ok=True)
        for message in batch:
            (self._folder / message.name).replace(done / message.name)
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


def replace_acknowledge(module: Path) -> int:
    """The author's change to a source: acknowledged messages are kept aside, not deleted."""
    text = module.read_text()
    start = text.index("    def _acknowledge(")
    end = text.index("\n    def ", start + 1)
    module.write_text(text[:start] + AUTHORS_ACKNOWLEDGE + text[end:])
    return len(AUTHORS_ACKNOWLEDGE.splitlines())


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
def test_every_kind_meets_its_own_lint_settings_and_loads_without_pytest(tmp_path: Path) -> None:
    """The generated pyproject.toml sets ruff's rules and mypy's strict mode: the toys meet them.

    mypy finds lakeferry through MYPYPATH: the checkout's editable install is an import hook,
    which mypy does not follow. (A name much longer than ``acme`` makes a few lines too long.)
    """
    for kind in plugin_template.KINDS:
        (tmp_path / kind).mkdir()
        package = plugin_template.write("acme", kind, tmp_path / kind)
        for check in (["ruff", "check", "-q"], ["ruff", "format", "--check", "-q"]):
            out = subprocess.run(
                [sys.executable, "-m", *check, "."],
                capture_output=True, text=True, cwd=package, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, f"{kind}: {' '.join(check)}\n{out.stdout}{out.stderr}"
        typed = subprocess.run(
            [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"),
             "lakeferry_acme", "tests"],
            capture_output=True, text=True, cwd=package, timeout=300,
            env={**os.environ, "MYPYPATH": str(ROOT / "daemon")},
        )  # fmt: skip
        assert typed.returncode == 0, f"{kind}: mypy\n{typed.stdout}{typed.stderr}"
        # What the daemon loads needs no test tools (the cache's toy store is lakeferry.testing's).
        no_pytest = "import sys; sys.modules['pytest'] = None; import lakeferry_acme"
        loads = subprocess.run(
            [sys.executable, "-c", no_pytest],
            capture_output=True, text=True, cwd=package, timeout=120,
        )  # fmt: skip
        assert loads.returncode == 0, f"{kind}: the plugin needs pytest\n{loads.stderr}"


def test_the_templates_are_package_data_that_ships_in_the_wheel() -> None:
    """Every template file matches a package-data glob, so an installed wheel has it."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = ROOT / "daemon" / "lakeferry"
    matched = {
        path.relative_to(package).as_posix()
        for pattern in setuptools["package-data"]["lakeferry"]
        for path in package.glob(pattern)
    }
    shipped = {
        path.relative_to(package).as_posix()
        for path in (package / "templates").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert shipped
    assert shipped - matched == set(), "template files the wheel would leave out"
    for kind in plugin_template.KINDS:  # each kind's folder is complete
        for name in ("kind.toml", "module.py.tmpl", "test.py.tmpl", "config.toml.tmpl"):
            assert f"templates/{kind}/{name}" in shipped


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
def test_generated_packages_install_pass_the_kit_and_are_listed(tmp_path: Path) -> None:
    """A downloader and a source, each changed as an author would, in one environment."""
    lakeferry("plugin", "new", "mem", "--kind", "downloader", "--dir", str(tmp_path))
    lakeferry("plugin", "new", "inbox", "--kind", "source", "--dir", str(tmp_path))
    packages = [tmp_path / "lakeferry-mem", tmp_path / "lakeferry-inbox"]
    assert replace_toy_body(packages[0] / "lakeferry_mem" / "downloader.py") < 100
    assert replace_acknowledge(packages[1] / "lakeferry_inbox" / "source.py") < 100

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
             *map(str, packages)],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout + install.stderr

        for package, count in zip(packages, (7, 6), strict=True):
            tests = subprocess.run(
                [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                 str(package / "pyproject.toml"), str(package / "tests")],
                capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
            )  # fmt: skip
            assert tests.returncode == 0, tests.stdout + tests.stderr
            assert f"{count} passed" in tests.stdout, tests.stdout

        listed = _json_lines(lakeferry("plugins", "--json", python=python, cwd=tmp_path))
        found = {
            p["name"]: (p["distribution"], p["version"], p["module"], p["provides"]) for p in listed
        }
        assert found["mem"] == ("lakeferry-mem", "0.1.0", "lakeferry_mem", ["downloader:mem (mem)"])
        assert found["inbox"] == ("lakeferry-inbox", "0.1.0", "lakeferry_inbox", ["source:inbox"])
        assert not {"mem", "inbox"} & {
            p["name"] for p in _json_lines(lakeferry("plugins", "--json"))
        }

        # The source's README shows a [[sources]] entry that the daemon's checks accept.
        config = tmp_path / "etc" / "lakeferry.toml"
        config.parent.mkdir()
        readme = (packages[1] / "README.md").read_text()
        [example] = re.findall(r"```toml\n(.*?)```", readme, re.S)
        config.write_text((ROOT / "etc" / "lakeferry.toml").read_text() + "\n" + example)
        checked = subprocess.run(
            [python, "-m", "lakeferry", "check-config", "-c", str(config)],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
            env=env | {"LAKEFERRY_STATE": str(tmp_path / "state")},
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert not (tmp_path / "state").exists(), "check-config created the state folder"
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        for package in packages:
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
