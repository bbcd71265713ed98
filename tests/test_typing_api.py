"""What a type checker and ``help()`` read of flipes' public API: annotations that resolve at run time, docstring Args
that name the signature's parameters, and no catch-all ``__getattr__`` that would type a misspelt name instead of
flagging it. No type checker runs here: these are the properties one relies on."""

from __future__ import annotations

import ast
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import ROOT

import flipes
import flipes.callbacks
import flipes.nn
import flipes.optim
import flipes.rl
import flipes.search
import flipes.shaping

MODULES = [flipes, flipes.nn, flipes.rl, flipes.shaping, flipes.optim, flipes.search, flipes.callbacks]


def _ours(value: object) -> bool:
    return (inspect.isclass(value) or inspect.isfunction(value)) and getattr(value, "__module__", "").startswith("flipes")


def _public_callables() -> Iterator[tuple[str, Callable[..., object]]]:
    """Each public function and class of the modules above, and each public method and property of those classes that
    flipes defines (a torch parent's own methods are torch's), once each."""
    seen: set[int] = set()
    for module in MODULES:
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            value = getattr(module, name)
            if not _ours(value) or id(value) in seen:
                continue
            seen.add(id(value))
            yield f"{module.__name__}.{name}", value
            if inspect.isclass(value):
                for attr, member in vars(value).items():
                    if attr.startswith("_") and attr != "__init__":
                        continue
                    func = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if inspect.isfunction(func) and func.__module__.startswith("flipes") and id(func) not in seen:
                        seen.add(id(func))
                        yield f"{module.__name__}.{name}.{attr}", func


PUBLIC = list(_public_callables())


def test_the_public_api_is_collected() -> None:
    """The walk reaches the names a user calls (else the tests below would pass on nothing)."""
    names = {name for name, _ in PUBLIC}
    wanted = ["flipes.FlipES.tell", "flipes.train", "flipes.Callback.on_generation", "flipes.rl.RunningNorm.update",
                "flipes.flipout", "flipes.nn.FlipoutLinear", "flipes.shaping.centered_ranks", "flipes.optim.ClipUp"]  # fmt: skip
    for expected in wanted:
        assert expected in names, expected


@pytest.mark.parametrize("name,func", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_annotations_resolve_at_run_time(name: str, func: Callable[..., object]) -> None:
    """``typing.get_type_hints`` evaluates every annotation of a public callable: each name an annotation uses is bound
    in its module at run time, not only under ``if TYPE_CHECKING`` (where pydantic, typer, jsonargparse or
    ``inspect.get_annotations(eval_str=True)`` fail with a NameError)."""
    target = func.__init__ if inspect.isclass(func) and "__init__" in vars(func) else func
    if inspect.isclass(target):
        return  # a class without an __init__ of its own: its parent's (torch's, or one reached above)
    hints = typing.get_type_hints(target)
    assert isinstance(hints, dict)


def _documented_args(doc: str) -> list[str]:
    """The parameter names of a Google-style ``Args:`` section (``device, dtype: ...`` names two)."""
    lines, names, i = inspect.cleandoc(doc).splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() not in ("Args:", "Arguments:", "Keyword Args:"):
            i += 1
            continue
        base, entry_indent, i = len(lines[i]) - len(lines[i].lstrip()), None, i + 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if line.strip():
                entry_indent = indent if entry_indent is None else entry_indent
                match = re.match(r"\s*([\w*, ]+?)\s*(\([^)]*\))?:", line)
                if indent == entry_indent and match:
                    names += [n.strip().lstrip("*") for n in match.group(1).split(",")]
            i += 1
    return names


def test_the_args_parser_reads_google_style() -> None:
    """The parser above reads one name, two names on one entry and a ``**kwargs`` entry, and skips continuations."""
    doc = """Summary.

        Args:
            alpha: one
                continued: not a name
            device, dtype (optional): two
            **kwargs: given on

        Returns:
            beta: not an argument
        """
    assert _documented_args(doc) == ["alpha", "device", "dtype", "kwargs"]


@pytest.mark.parametrize("name,func", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_args_are_the_signature_parameters(name: str, func: Callable[..., object]) -> None:
    """Where a public callable's docstring has an ``Args:`` section (``help()`` shows it), it names each parameter of
    the signature and no other: a renamed or added parameter is documented under its own name."""
    documented = _documented_args(func.__doc__ or "")
    if not documented:
        return
    parameters = inspect.signature(func).parameters
    variadic = {p.name for p in parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    named = [p for p in parameters if p not in ("self", "cls") and p not in variadic]
    assert not set(documented) - set(named) - variadic, f"documented but not parameters: {set(documented) - set(named)}"
    assert not set(named) - set(documented), f"parameters not documented: {set(named) - set(documented)}"


def _getattr_defs(module: types.ModuleType) -> list[tuple[ast.FunctionDef, list[ast.AST]]]:
    """Each ``def __getattr__`` of a module's file, with the chain of nodes that encloses it."""
    found: list[tuple[ast.FunctionDef, list[ast.AST]]] = []

    def walk(node: ast.AST, parents: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef) and child.name == "__getattr__":
                found.append((child, parents))
            walk(child, [*parents, child])

    walk(ast.parse(inspect.getsource(module)), [])
    return found


def _only_raises(func: ast.FunctionDef) -> bool:
    return not any(isinstance(node, ast.Return) for node in ast.walk(func))


@pytest.mark.parametrize("module_name", ["flipes", "flipes.es.population"])
def test_a_getattr_that_only_raises_is_hidden_from_type_checkers(module_name: str) -> None:
    """A ``__getattr__`` that returns nothing (it only words an AttributeError) sits under ``if not TYPE_CHECKING``: a
    type checker that sees one types every unknown name through it (``flipes.FlipE``, ``from flipes import FlipEs``,
    ``es.population().size``) instead of reporting it, as Python does at run time."""
    import importlib

    module = importlib.import_module(module_name)
    defs = [(func, parents) for func, parents in _getattr_defs(module) if _only_raises(func)]
    assert defs, module_name
    for func, parents in defs:
        guards = [p for p in parents if isinstance(p, ast.If)]
        hidden = any(ast.unparse(g.test) == "not TYPE_CHECKING" and func in g.body for g in guards)
        assert hidden, f"{module_name}:{func.lineno}: def __getattr__ outside `if not TYPE_CHECKING:`"


def test_the_hidden_getattrs_still_word_the_error_at_run_time() -> None:
    """At run time the hidden ``__getattr__`` still runs: another library's class name says what flipes runs instead,
    and an attribute read on ``es.population()`` (the block, not the population) says to write ``with ... as pop``."""
    with pytest.raises(AttributeError, match="flipes has no OpenES: its one engine is FlipES"):
        flipes.OpenES  # noqa: B018
    es = flipes.FlipES(flipes.flipout(torch.nn.Linear(2, 1)), popsize=4, sigma=0.1, lr=0.1, seed=0)
    with pytest.raises(AttributeError, match=r"es.population\(\) is a `with` block, not the population: .* pop.size"):
        es.population().size  # noqa: B018
    assert (ROOT / "flipes" / "__init__.py").is_file()


def test_running_norm_declares_the_buffers_it_registers() -> None:
    """Each buffer a RunningNorm registers (``policy.obs_norm.mean``, ``.var``, ``.count``) is declared ``Tensor`` on the
    class: without it nn.Module's ``__getattr__`` types them ``Tensor | Module``, and ``norm.mean.shape`` fails a
    type check."""
    from flipes.rl import RunningNorm

    hints = typing.get_type_hints(RunningNorm)
    buffers = dict(RunningNorm(3).named_buffers())
    assert set(buffers) == {"mean", "var", "count"}
    assert all(hints.get(name) is torch.Tensor for name in buffers), {name: hints.get(name) for name in buffers}


def _admits(hint: object, value: object) -> bool:
    """Whether ``value`` is an instance of ``hint`` (a class, a runtime-checkable protocol, or a union of them)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(isinstance(value, typing.get_origin(o) or o) for o in options if o is not type(None))


def test_integer_parameters_admit_the_integers_they_take() -> None:
    """The integer parameters that take numpy's integers (and a 0-d integer tensor, ``fitness.argmax()``) at run time
    are annotated to admit them, so that ``es.member_state_dict(np.argmax(f))`` passes a type check as it runs."""
    import numpy as np

    model = flipes.flipout(torch.nn.Linear(2, 1))
    es = flipes.FlipES(model, popsize=np.int64(4), sigma=0.1, lr=0.1, seed=np.int64(1), groups=np.int64(2))
    with es.population() as pop:
        model(torch.zeros(pop.size, 2))
    assert es.member_state_dict(np.int64(3)).keys() == es.member_noise(torch.tensor(3)).keys() == {"weight", "bias"}
    hints = typing.get_type_hints(flipes.FlipES.__init__)
    for name in ("popsize", "seed", "groups"):
        assert _admits(hints[name], np.int64(1)) and _admits(hints[name], 1), name
    for method in (flipes.FlipES.member_parameters, flipes.FlipES.member_noise, flipes.FlipES.member_state_dict):
        index = typing.get_type_hints(method)["index"]
        assert _admits(index, np.int64(1)) and _admits(index, torch.tensor(1)), method.__name__
    evaluate = typing.get_type_hints(flipes.evaluate_policy)
    assert _admits(evaluate["episodes"], np.int64(1)) and _admits(evaluate["max_steps"], np.int64(1))


def test_shaping_may_return_what_tell_takes() -> None:
    """FlipES's ``shaping=`` is documented to return a tensor, a numpy array or a list; ``tell`` takes each, and the
    annotation's return type admits each (a user's ``def shape(f: Tensor) -> np.ndarray`` passes a type check)."""
    import numpy as np

    model = flipes.flipout(torch.nn.Linear(2, 1))
    returned = {
        "tensor": lambda f: f - f.mean(),
        "array": lambda f: (f - f.mean()).numpy(),
        "list": lambda f: (f - f.mean()).tolist(),
    }
    for kind, shaping in returned.items():
        es = flipes.FlipES(model, popsize=4, sigma=0.1, lr=0.1, shaping=shaping)
        with es.population() as pop:
            model(torch.zeros(pop.size, 2))
        es.tell(torch.arange(4.0))
        assert es.generation == 1, kind
    hint = typing.get_type_hints(flipes.FlipES.__init__)["shaping"]
    result = typing.get_args(hint)[1]
    for value in (torch.zeros(2), np.zeros(2), [0.0, 1.0]):
        assert _admits(result, value), type(value).__name__


def _exports(module: types.ModuleType, name: str) -> bool:
    """Whether a type checker takes ``from module import name`` from a package that ships ``py.typed``: the module
    defines it, lists it in ``__all__`` or re-exports it as ``import name as name``."""
    if name in getattr(module, "__all__", ()):
        return True
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for target in targets for t in ast.walk(target)):
                return True
        if isinstance(node, ast.ImportFrom) and any(a.name == name and a.asname == name for a in node.names):
            return True
    return False


def test_the_dotted_names_help_shows_are_exported_where_it_says() -> None:
    """Each ``flipes.<module>.<Name>`` that a public docstring spells (``help(flipes.Callback)``: ``state`` is a
    ``flipes.train_state.TrainState``) is exported by that module: a user who writes ``from flipes.<module> import
    <Name>`` to annotate their code gets no "is not exported" error from pyright or ``mypy --strict``."""
    import importlib

    docs = [inspect.getdoc(func) or "" for _, func in PUBLIC] + [inspect.getdoc(m) or "" for m in MODULES]
    spelled = {match for doc in docs for match in re.findall(r"\b(flipes(?:\.[a-z_]+)+)\.([A-Za-z_]\w*)\b", doc)}
    checked = []
    for module_name, name in sorted(spelled):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # flipes.Name.attribute: a class's attribute, not a module's name
        if not hasattr(module, name) or inspect.ismodule(getattr(module, name)):
            continue
        checked.append(f"{module_name}.{name}")
        assert _exports(module, name), f"{module_name}.{name}: not exported by {module_name}"
    assert "flipes.train_state.TrainState" in checked


def _raises_section(func: Callable[..., object]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc[doc.index("Raises:") :] if "Raises:" in doc else ""


def test_the_exceptions_raised_are_those_the_docstrings_name(tmp_path: Path) -> None:
    """A mistake in a call raises an exception that the callable's ``Raises:`` section (``help()``) names, checked by
    making each mistake."""
    from torch import nn

    model = flipes.flipout(nn.Linear(2, 1))
    (tmp_path / "file").write_text("")
    mistakes: list[tuple[Callable[..., object], Callable[[], object]]] = [
        (flipes.FlipES, lambda: flipes.FlipES(model, popsize=4.0)),
        (flipes.FlipES, lambda: flipes.FlipES(3, popsize=4)),  # type: ignore[arg-type]
        (flipes.FlipES, lambda: flipes.FlipES(model, popsize=6, groups=4)),
        (flipes.FlipES, lambda: flipes.FlipES(nn.Linear(2, 1), popsize=4)),
        (flipes.flipout, lambda: flipes.flipout(3)),
        (flipes.flipout, lambda: flipes.flipout(nn.Linear(2, 1), frozen=["nope"])),
        (flipes.evaluate_policy, lambda: flipes.evaluate_policy(lambda x: x, "flipes/CartPole-v1")),  # type: ignore[arg-type]
        (flipes.evaluate_policy, lambda: flipes.evaluate_policy(nn.Linear(4, 2), "flipes/CartPole-v1", episodes=0)),
        (flipes.read_metrics, lambda: flipes.read_metrics(tmp_path)),
        (flipes.load_checkpoint, lambda: flipes.load_checkpoint(tmp_path / "none")),
        (flipes.read_checkpoint, lambda: flipes.read_checkpoint(tmp_path)),
        (flipes.save_checkpoint, lambda: flipes.save_checkpoint({"a": 1}, tmp_path / "file" / "c.pt")),
        (flipes.load_policy, lambda: flipes.load_policy(tmp_path)),
    ]
    told = flipes.FlipES(model, popsize=4, sigma=0.1, lr=0.1)
    _check_documented(flipes.FlipES.tell, lambda: told.tell(torch.zeros(4)))  # before any population
    with told.population() as pop:
        model(torch.zeros(pop.size, 2))
    for fitness in (torch.zeros(3), torch.tensor([0.0, float("nan"), 0.0, 0.0]), "abcd"):
        mistakes.append((flipes.FlipES.tell, lambda fitness=fitness: told.tell(fitness)))
    for func, mistake in mistakes:
        _check_documented(func, mistake)


def _check_documented(func: Callable[..., object], mistake: Callable[[], object]) -> None:
    """``mistake()`` raises an exception that ``func``'s Raises section names (its class or a base of it)."""
    with pytest.raises(Exception) as raised:
        mistake()
    documented = [k.__name__ for k in raised.type.__mro__ if re.search(rf"\b{k.__name__}:", _raises_section(func))]
    assert documented, (func.__name__, raised.type.__name__)


def test_every_public_method_and_property_has_a_docstring() -> None:
    """``help()`` on a public class shows a line for each method and property flipes defines on it (a module's
    ``forward`` is documented by its class's Shape section, as in torch)."""
    undocumented = [name for name, func in PUBLIC if not name.endswith((".__init__", ".forward")) and not inspect.getdoc(func)]
    assert not undocumented, undocumented


def test_for_env_types_env_as_the_config_field_it_sets() -> None:
    """``TrainConfig.for_env(env, ...)`` annotates ``env`` as the ``TrainConfig.env`` field it sets (``str``, not
    ``Any``), and refuses another type at run time as the annotation says."""
    hints = typing.get_type_hints(flipes.TrainConfig.for_env)
    assert hints["env"] is typing.get_type_hints(flipes.TrainConfig)["env"] is str
    with pytest.raises(flipes.UsageError, match="is not a string"):
        flipes.TrainConfig.for_env(3)  # type: ignore[arg-type]
