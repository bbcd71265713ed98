"""What a user's type checker and IDE see of flipes: the package ships its annotations (PEP 561), and the public names
resolve and carry docstrings. No type checker runs here: these are the properties that let one work."""

from __future__ import annotations

import inspect
import sys

import pytest
from helpers import ROOT

import flipes


@pytest.mark.skipif(sys.version_info < (3, 11), reason="reads pyproject.toml with tomllib (Python >= 3.11)")
def test_the_wheel_ships_the_py_typed_marker() -> None:
    """flipes/py.typed exists and pyproject.toml's package data ships it: without it in the installed package, mypy
    skips every ``import flipes`` as untyped (everything flipes returns is Any) and pyright guesses."""
    import tomllib

    assert (ROOT / "flipes" / "py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["flipes"]


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    """Each name of ``flipes.__all__`` is bound in the package and, for the classes, functions and modules, documented
    (``help(flipes.X)`` and an IDE's hover show it)."""
    for name in flipes.__all__:
        value = getattr(flipes, name)
        if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismodule(value):
            assert (inspect.getdoc(value) or "").strip(), name
