"""What pyproject.toml promises a user who installs flipes: a build that setuptools keeps accepting, and extras that
install what the code they are named for imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import warnings
from pathlib import Path

import pytest
from helpers import ROOT


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with tomllib (Python >= 3.11)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist_name(requirement: str) -> str:
    """``scikit-learn`` of ``scikit-learn>=1.2; platform_system == 'Linux'``, normalized as PEP 503 does."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()


def test_setuptools_reads_the_project_table_without_a_deprecation() -> None:
    """setuptools applies ``[project]`` with no SetuptoolsDeprecationWarning: a ``license = {text = ...}`` table warns
    from setuptools 77 on that builds using it stop working after 2027-02-18, and ``pip install`` of the project takes
    the newest setuptools its ``[build-system]`` allows."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX license strings (the build takes >= 77)")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    from setuptools.warnings import SetuptoolsDeprecationWarning

    requires = _pyproject()["build-system"]["requires"]
    floor = next(r for r in requires if _dist_name(r) == "setuptools")
    assert int(re.search(r">=\s*(\d+)", floor).group(1)) >= 77, f"{floor}: SPDX license strings need setuptools >= 77"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SetuptoolsDeprecationWarning)
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.get_name() == "flipes"


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, function bodies included (plots import matplotlib late)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_examples_extra_installs_what_the_digits_and_repro_scripts_import() -> None:
    """``pip install 'flipes[examples]'`` (the README's extra for the digits and ``repro_*`` scripts) with flipes' own
    dependencies installs every distribution those scripts import, through the scripts/ files they import in turn:
    without matplotlib a ``repro_*`` run computed for its whole length, then ended in a traceback at its figure, before
    writing its tables."""
    project = _pyproject()["project"]
    installed = {_dist_name(r) for r in [*project["dependencies"], *project["optional-dependencies"]["examples"]]}
    scripts = ROOT / "scripts"
    local = {p.stem for p in scripts.glob("*.py")}
    distributions = importlib.metadata.packages_distributions()
    starts = ["digits", *sorted(p.stem for p in scripts.glob("repro_*.py") if p.stem != "repro_common")]
    assert len(starts) >= 4, starts  # digits, repro_variance, repro_learning, repro_timing
    seen: set[str] = set()
    todo, missing = list(starts), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for module in _imported_modules(scripts / f"{name}.py") - set(sys.stdlib_module_names) - {"flipes", "envs"}:
            if module in local:
                todo.append(module)
                continue
            dists = {_dist_name(d) for d in distributions.get(module, [])}
            assert dists, f"scripts/{name}.py imports {module}, which no installed distribution provides"
            if not dists & installed:
                missing[module] = f"scripts/{name}.py"
    assert not missing, f"imported but in neither flipes' dependencies nor [examples]: {missing}"


def test_the_version_flipes_reports_is_the_one_its_metadata_gives() -> None:
    """``flipes --version`` (and a checkpoint's header, and "pip install -U flipes" hints) read ``flipes.__version__``,
    pip and ``importlib.metadata`` the version in pyproject.toml: the two are one number."""
    import flipes

    assert _pyproject()["project"]["version"] == flipes.__version__
