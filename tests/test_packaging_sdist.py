"""What flipes' source archive ships, read from MANIFEST.in by setuptools' own template reader: the license text the
declared license names, and everything the tests and the README's scripts need to run from the unpacked archive."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

# what the sdist holds beyond the packages (which setuptools adds by itself): the folders MANIFEST.in grafts
SHIPPED_DIRS = ("tests", "scripts", ".ci")


def _manifest_files(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The files MANIFEST.in selects among the repository's top-level files and those under SHIPPED_DIRS (compiled
    caches that a test run left there included, as a build would find them)."""
    egg_info = pytest.importorskip("setuptools.command.egg_info", reason="MANIFEST.in is read by setuptools")
    monkeypatch.chdir(ROOT)  # the template's paths are relative to the project's root
    candidates = [p for p in ROOT.iterdir() if p.is_file()]
    candidates += [p for d in SHIPPED_DIRS if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*") if p.is_file()]
    files = egg_info.FileList()
    files.set_allfiles([p.relative_to(ROOT).as_posix() for p in candidates])
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            files.process_template_line(line)
    return {Path(f).as_posix() for f in files.files}


def _needed(folder: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file() and _source(p)}


def _source(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")


def test_the_archive_holds_the_license_and_what_the_tests_and_scripts_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """MANIFEST.in ships LICENSE (whose text is the MIT license pyproject.toml declares), the docs and Makefile, every
    file of tests/ (conftest.py, helpers.py) and scripts/ (which tests and the README run), and no compiled cache."""
    shipped = _manifest_files(monkeypatch)
    license_text = (ROOT / "LICENSE").read_text()
    declared = re.search(r'^license\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared is not None and declared.group(1) == "MIT" and license_text.startswith("MIT License")
    assert {"LICENSE", "README.md", "DEVELOPERS.md", "Makefile"} <= shipped
    for folder in ("tests", "scripts"):
        missing = _needed(folder) - shipped
        assert not missing, f"MANIFEST.in leaves out of the source archive: {sorted(missing)[:5]}"
    assert {"tests/conftest.py", "tests/helpers.py"} <= shipped
    compiled = sorted(f for f in shipped if not _source(Path(f)))
    assert not compiled, f"the source archive would ship compiled caches: {compiled[:5]}"
