"""What a user's type checker and IDE see of flipes: the package ships its annotations (PEP 561), and the public names
resolve and carry docstrings. No type checker runs here: these are the properties that let one work."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
from pathlib import Path

import pytest
from helpers import ROOT
from torch import nn

import flipes


@pytest.mark.skipif(sys.version_info < (3, 11), reason="reads pyproject.toml with tomllib (Python >= 3.11)")
def test_the_wheel_ships_the_py_typed_marker() -> None:
    """flipes/py.typed and envs/py.typed exist and pyproject.toml's package data ships them: without the marker in the
    installed package, mypy skips every ``import flipes`` (or ``from envs.base import TorchVectorEnv``) as untyped,
    everything from it Any."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in ("flipes", "envs"):
        assert (ROOT / package / "py.typed").is_file(), package
        assert "py.typed" in setuptools["package-data"][package], package


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


class _OwnLinear(nn.Linear):
    """A user's subclass that keeps Linear's forward: it becomes a Flipout subclass of itself."""


def test_flipout_returns_an_instance_of_the_class_it_is_given() -> None:
    """``flipout(module: M) -> M`` holds: a model comes back as itself, and a supported layer given alone (each of
    them, and a user's subclass of one) as a Flipout layer that subclasses the layer's own class."""
    from flipes.nn.flipout_classes import _FLIPOUT_OF

    layers = [nn.Linear(3, 2), nn.Conv1d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv3d(2, 2, 1), nn.ConvTranspose1d(2, 2, 1),
              nn.ConvTranspose2d(2, 2, 1), nn.ConvTranspose3d(2, 2, 1), nn.Embedding(5, 3),
              nn.MultiheadAttention(4, 2), nn.LSTM(3, 4), nn.GRU(3, 4), nn.RNN(3, 4), nn.LSTMCell(3, 4),
              nn.GRUCell(3, 4), nn.RNNCell(3, 4), _OwnLinear(3, 2)]  # fmt: skip
    assert set(_FLIPOUT_OF) <= {type(layer) for layer in layers}  # every supported layer is checked
    for layer in layers:
        converted = flipes.flipout(layer)
        assert converted is not layer and isinstance(converted, type(layer)), type(layer).__name__
    model = nn.Sequential(nn.Linear(3, 2))
    assert flipes.flipout(model) is model


def test_every_submodule_the_readme_reaches_from_import_flipes_is_bound_there() -> None:
    """Each ``flipes.<module>.<name>`` the README writes (``flipes.rl.RolloutFitness``, ``flipes.search.SigmaDecay``)
    names a submodule that ``flipes/__init__.py`` imports and lists in ``__all__``: a type checker sees a submodule as an
    attribute of the package only so, whatever else happened to import it at run time."""
    reached = set(re.findall(r"\bflipes\.([a-z_]+)\.[A-Za-z_]", (ROOT / "README.md").read_text()))
    assert {"rl", "search"} <= reached
    modules = {m for m in reached if (ROOT / "flipes" / m).is_dir() or (ROOT / "flipes" / f"{m}.py").is_file()}
    assert modules == reached  # each is a submodule, not a class or a function
    assert not modules - set(flipes.__all__)
    assert all(inspect.ismodule(getattr(flipes, m)) for m in modules)
    # the import itself, read from the file: at run time another module's import binds a submodule on the package too
    tree = ast.parse((ROOT / "flipes" / "__init__.py").read_text())
    imported = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "flipes"
                for a in node.names}  # fmt: skip
    assert not modules - imported, modules - imported


def test_the_signature_of_trainconfig_is_its_fields() -> None:
    """``inspect.signature`` (``help()``, a notebook's call tip) of TrainConfig, which defines ``__new__``, lists its
    fields with their defaults in order, not ``(*args, **kwargs)``; a dataclass subclass's lists its own extra field."""
    fields = dataclasses.fields(flipes.TrainConfig)
    params = list(inspect.signature(flipes.TrainConfig).parameters.values())
    assert [p.name for p in params] == [f.name for f in fields]
    assert all(p.default == f.default for p, f in zip(params, fields, strict=True) if f.default is not dataclasses.MISSING)

    @dataclasses.dataclass
    class Extended(flipes.TrainConfig):
        extra: int = 3

    assert list(inspect.signature(Extended).parameters)[-1] == "extra"


@pytest.mark.parametrize("name", ["ES", "OpenES", "PGPE", "SNES", "ARS"])
def test_other_libraries_class_names_point_to_flipes_engine(name: str) -> None:
    """flipes.OpenES and the like (evosax's, EvoTorch's class names) raise an AttributeError naming FlipES or the
    --algo that runs that algorithm, and hasattr stays False; an unknown name keeps Python's own message."""
    with pytest.raises(AttributeError, match=rf"flipes has no {name}: its one engine is .*(FlipES|--algo)"):
        getattr(flipes, name)
    assert not hasattr(flipes, name)
    with pytest.raises(AttributeError, match="module 'flipes' has no attribute 'not_a_name'"):
        flipes.not_a_name  # noqa: B018
