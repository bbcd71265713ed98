"""What a user's type checker and IDE see of flipes: the package ships its annotations (PEP 561), and the public names
resolve and carry docstrings. No type checker runs here: these are the properties that let one work."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

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


def test_flipes_shaping_is_a_module_file_exporting_every_shaping_function() -> None:
    """``from flipes.shaping import z_score`` (the README's spelling) imports a module file, which static tools resolve
    as Python does, and it exports each public function of :mod:`flipes.es.shaping`, the very same objects."""
    import flipes.es.shaping as engine_shaping
    import flipes.shaping

    assert Path(inspect.getfile(flipes.shaping)) == ROOT / "flipes" / "shaping.py"
    functions = {n for n, f in vars(engine_shaping).items() if inspect.isfunction(f) and f.__module__ == engine_shaping.__name__}
    public = {n for n in functions if not n.startswith("_")}
    assert public and set(flipes.shaping.__all__) == public
    assert all(getattr(flipes.shaping, n) is getattr(engine_shaping, n) for n in public)
