"""The package as built for PyPI: its licence (PEP 639), what the sdist ships, no dead
dependencies, and a build without deprecation warnings."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib: Any = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Distribution names whose import name differs.
IMPORT_NAMES = {"pyyaml": "yaml"}


def test_the_licence_is_declared_the_pep_639_way() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
    requires = PYPROJECT["build-system"]["requires"]
    assert any(
        re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires
    )


def imported_top_level_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "aioamztoken").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_runtime_dependency_is_imported() -> None:
    imported = imported_top_level_names()
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        assert module in imported, f"{requirement} is declared but never imported"
    assert not any(
        "aiofiles" in r
        for extra in PYPROJECT["project"]["optional-dependencies"].values()
        for r in extra
    )


def test_the_test_extra_brings_no_plaintext_keyring() -> None:
    # keyrings.alt would become the keyring of every program in the environment where no
    # real one is found: it is installed only when asked for by name.
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name in ("test", "all", "keyring"):
        assert not any(r.startswith("keyrings.alt") for r in extras[name]), name
    assert any(r.startswith("keyrings.alt") for r in extras["insecure-test-keyring"])


@pytest.mark.slow
def test_the_build_warns_of_nothing_and_the_sdist_ships_no_half_test_suite(
    tmp_path: Path,
) -> None:
    pytest.importorskip("build")
    # A copy of what the build reads, so that its build/ and egg-info stay out of the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "docs/_build"
        ),
    )
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "deprecat" not in output.lower(), output
    assert "SetuptoolsWarning" not in output, output
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    assert "LICENSE" in names
    assert "aioamztoken/cli.py" in names
    # Either the tests run from the sdist (conftest and helpers included) or none ship.
    shipped_tests = [n for n in names if n.startswith("tests/")]
    assert shipped_tests == [] or "tests/conftest.py" in shipped_tests
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(
            archive.read(n).decode()
            for n in archive.namelist()
            if n.endswith(".dist-info/METADATA")
        )
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert "License-Expression: MIT" in metadata
    assert "License-File: LICENSE" in metadata
    assert "aiofiles" not in metadata
