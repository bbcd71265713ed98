"""User code plugged into a run: a fitness, a model, an evaluation, an optimizer, a fitness shaping, named
``module:function`` (the command line, config files) or given to :func:`flipes.train` as Python objects.

A run directory records the name (``module:qualname``) of each but the evaluation either way, so a resume can
check that the same code is plugged in; code given as an object must be given again to resume or load the run.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from flipes.cli import load_callable, main_module
from flipes.errors import UsageError
from flipes.es.checks import GATHER_FIX, check_weights
from flipes.es.optimizer import refuse_flags, unsteppable
from flipes.es.options import BOTH_STATE_METHODS, half_state_methods
from flipes.nn.convert import uncompiled

OPTION: MappingProxyType[str, str] = MappingProxyType(
    {"fitness": "--fitness", "model": "--model", "evaluate": "evaluate", "optimizer": "--optimizer", "shaping": "--shaping"}
)
CALL: MappingProxyType[str, tuple[str, int]] = MappingProxyType(
    {
        "fitness": ("fitness(model, pop) -> Tensor[pop.size]", 2),
        "model": ("model(env) -> nn.Module (env is None with env='none')", 1),
        "evaluate": ("evaluate(model) -> float or {'eval_return': float, ...}", 1),
        "optimizer": ("optimizer(params) -> torch.optim.Optimizer", 1),
        "shaping": ("shaping(fitness) -> Tensor of weights, one per member", 1),
    }
)
# plug-ins whose call must return a value (weights, returns), which a class's call never does: an instance of it can
CALLED_INSTANCES = ("fitness", "evaluate", "shaping")
# plug-ins given as objects or module:function names (evaluate is never recorded: see Plugins.take)
NAMED = ("fitness", "model", "optimizer", "shaping")


def name_of(obj: Any) -> str:
    """``module:qualname`` of a function or class, ``__main__[script]:qualname`` for one of the running
    script; ``module:name`` of an instance bound to a name in its class's module; anything else (a module or other
    instance, a bound method, a ``functools.partial``) gets a name in angle brackets, which no import can load back."""
    if isinstance(obj, nn.Module):
        obj = uncompiled(obj)  # torch.compile(net) is net's code
    if inspect.isfunction(obj) or inspect.isclass(obj):
        module = obj.__module__
        if module == "__main__" and main_module():
            module = f"__main__[{main_module()}]"
        return f"{module}:{obj.__qualname__}"
    if isinstance(obj, functools.partial):
        return f"{name_of(obj.func)}<partial>"
    if inspect.ismethod(obj):
        return f"{obj.__module__}:<bound method {obj.__qualname__}>"
    module = type(obj).__module__
    if not isinstance(obj, nn.Module):  # a module's name would load a module, where --model takes a factory
        # an instance bound to a name in its class's module (a shaping object with state): the name --shaping gives it,
        # so that a run started from the command line resumes from Python given the object, and back
        namespace = vars(sys.modules[module]) if module in sys.modules else {}
        bound = sorted(k for k, v in namespace.items() if v is obj and not k.startswith("_"))
        if bound:
            shown = f"__main__[{main_module()}]" if module == "__main__" and main_module() else module
            return f"{shown}:{bound[0]}"
    return f"{module}:<{type(obj).__qualname__} object>"


def same_code(saved: Any, now: Any) -> bool:
    """Whether a run's recorded plug-in name and the one given now name the same code: equal, or the
    same function of the same script once run as the main module and once imported
    (``python train.py`` records ``__main__[train]:make_model``; another program that imports train
    gives ``train:make_model``)."""
    if saved == now:
        return True
    if not (isinstance(saved, str) and isinstance(now, str)):
        return False
    (saved_module, _, saved_name), (now_module, _, now_name) = saved.partition(":"), now.partition(":")

    def script(module: str) -> str:
        return module[len("__main__[") : -1] if module.startswith("__main__[") and module.endswith("]") else module

    return saved_name == now_name and "<" not in saved_name and script(saved_module) == script(now_module)


def check_call(fn: Callable[..., Any], kind: str, what: str) -> None:
    """Raise a UsageError when ``fn`` cannot be called the way flipes calls a ``kind`` plug-in."""
    how, count = CALL[kind]
    if inspect.isclass(fn) and kind in CALLED_INSTANCES:  # called, a class makes an instance of itself, never a value
        what = what or f"{fn.__module__}:{fn.__qualname__}"
        module, _, name = what.rpartition(":")
        short = name.rpartition(".")[2]  # a nested class's own name: its dotted qualname lowered assigns nothing
        instance = short.lower() if short.lower() != short else f"{short}_"
        raise UsageError(
            OPTION[kind],
            f"{what} is a class, and flipes calls {how}: a class called makes an instance of itself instead",
            f"name an instance of it ({instance} = {name}() in {module}, then {module}:{instance}), or give the instance",
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call say it
        return
    try:
        signature.bind(*([None] * count))
    except TypeError as e:
        raise UsageError(OPTION[kind], f"{what} takes other arguments ({e})", f"define it as {how}") from None


def check_state_methods(fn: Any, kind: str, what: str) -> None:
    """Raise where ``fn`` has one of ``state_dict`` and ``load_state_dict`` without the other (as FlipES refuses it, but
    naming the option, before the run directory is written)."""
    if (half := half_state_methods(fn)) is not None:
        raise UsageError(OPTION[kind], f"{what} {half}", BOTH_STATE_METHODS)


def checked_factory(fn: Callable[..., Any], spec: str) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    """``fn`` with what it builds checked as FlipES checks it, but as one line naming ``--optimizer`` (FlipES's own
    TypeError or ValueError reached the command line as a traceback): an optimizer, steppable, over exactly the
    parameters given. What ``fn`` itself raises propagates unchanged."""
    fix = "build it over the parameters it is given, e.g. def opt(params): return torch.optim.SGD(params, lr=0.1)"

    @functools.wraps(fn)
    def build(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        built = fn(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise UsageError("--optimizer", f"{spec} returned {type(built).__name__}, not a torch.optim.Optimizer", fix)
        _check_steppable(type(built), spec)
        try:
            refuse_flags(built)
        except ValueError as e:
            raise UsageError("--optimizer", f"{spec}: {str(e).removeprefix('optimizer: ')}") from None
        given, held = {id(p) for p in params}, [p for group in built.param_groups for p in group["params"]]
        missing, added = len(given - {id(p) for p in held}), sum(id(p) not in given for p in held)
        if missing or added:
            what = ", ".join(w for w, n in ((f"leaves out {missing} of them", missing), (f"adds {added} others", added)) if n)
            problem = f"{spec} builds {type(built).__name__} over other parameters than the {len(given)} given ({what})"
            raise UsageError("--optimizer", problem, fix)
        return built

    return build


class CheckedShaping:
    """A ``--shaping`` of one's own whose weights are checked as FlipES checks them, but as one line naming
    ``--shaping`` (FlipES's own TypeError or ValueError reached the command line as a traceback). Its ``state_dict``
    and ``load_state_dict``, where it has them, are its own, so its state rides in the checkpoint as it would."""

    def __init__(self, fn: Callable[..., Any], spec: str) -> None:
        self.fn, self.spec = fn, spec
        # named as the run records it (what the processes compare, es's repr): the code's name, never the wrapper's
        self.__module__, _, self.__qualname__ = spec.partition(":")

    def __call__(self, fitness: torch.Tensor) -> Any:
        weights = self.fn(fitness)
        try:
            check_weights(weights, fitness)
        except (TypeError, ValueError) as e:
            problem, gather, _ = str(e).partition(f"; {GATHER_FIX}")  # the cause of too few weights goes with the fix
            fix = "return one finite weight per member, in the members' order" + (f"; {GATHER_FIX}" if gather else "")
            raise UsageError("--shaping", f"{self.spec}: {problem}", fix) from None
        return weights

    def __getattr__(self, name: str) -> Any:
        fn = self.__dict__.get("fn")
        if name == "func":  # the function FlipES's checks recognize (ars, also as functools.partial(ars, top=b))
            return getattr(fn, "func", fn)
        if name not in ("state_dict", "load_state_dict"):  # no other lookup (pickle's) reaches fn
            raise AttributeError(name)
        return getattr(fn, name)


def _check_steppable(cls: type[torch.optim.Optimizer], spec: str) -> None:
    """Refuse a torch.optim class a FlipES cannot step (``flipes.es.optimizer.unsteppable``) where it is named, before
    the run directory is written (FlipES refuses it too, where it builds it)."""
    problem = unsteppable(cls)
    if problem is not None:
        fix = "use a first-order optimizer of dense gradients, e.g. --optimizer torch.optim:Adam or torch.optim:SGD"
        raise UsageError("--optimizer", f"{spec}: {problem}", fix)


@dataclass(frozen=True)
class Plugins:
    """The Python objects given to :func:`flipes.train` in place of ``module:function`` names."""

    fitness: Callable[..., Any] | None = None
    model: Callable[..., Any] | nn.Module | None = None
    evaluate: Callable[..., Any] | None = None
    optimizer: Callable[..., Any] | None = None
    shaping: Callable[..., Any] | None = None

    @classmethod
    def take(cls, overrides: dict[str, Any]) -> Plugins:
        """Take the objects out of ``overrides`` (``fitness=``, ``model=``, ``evaluate=``, ``optimizer=``,
        ``shaping=``), leaving their names in ``overrides`` for the config (flipes' own shaping functions
        by the names ``--shaping`` gives them)."""
        from flipes.search import SHAPINGS

        found: dict[str, Any] = {}
        for key in NAMED:
            value = overrides.get(key)
            if key == "shaping" and value is not None and not isinstance(value, str):
                own = [name for name, fn in SHAPINGS.items() if fn is value and name != "auto"]
                if own:  # shaping=flipes.shaping.z_score is --shaping z-score
                    overrides[key] = own[0]
                    continue
            if value is not None and not isinstance(value, str):
                if not callable(value):
                    raise UsageError(
                        OPTION[key],
                        f"{type(value).__name__} is neither a function nor module:function",
                        f"pass a function {CALL[key][0]}, or its module:function",
                    )
                found[key] = value
                overrides[key] = name_of(value)
        if "evaluate" in overrides:
            value = overrides.pop("evaluate")
            if isinstance(value, str):  # module:function, imported now (a run records no evaluate)
                value = load_callable(value, "evaluate")
            if value is not None:
                if not callable(value):
                    how = CALL["evaluate"][0]
                    raise UsageError("evaluate", f"{type(value).__name__} is not a function", f"pass a function {how}")
                found["evaluate"] = value
        return cls(**found)

    def check(self, fitness: str) -> None:
        """An ``evaluate`` needs a custom fitness: an env's runs are evaluated by their own episodes."""
        if self.evaluate is not None and not fitness:
            raise UsageError("evaluate", "is given without a custom fitness", "give fitness= with it, or leave evaluate out")

    def optimizer_fn(self, spec: str) -> Callable[..., Any]:
        """The optimizer factory (or ``torch.optim`` class): the object given, else ``spec`` imported."""
        fn = self.optimizer if self.optimizer is not None else load_callable(spec, "--optimizer")
        if not (isinstance(fn, type) and issubclass(fn, torch.optim.Optimizer)):  # a class is built as cls(params, lr=lr)
            check_call(fn, "optimizer", spec)
            return checked_factory(fn, spec or name_of(fn))
        _check_steppable(fn, spec or name_of(fn))
        try:
            inspect.signature(fn).bind(None, lr=0.0)
        except TypeError as e:  # cls(params, lr=lr) would fail at the build, in a traceback
            # "takes no lr" only where that is why: one taking lr may lack a default for another argument
            why = "which it cannot take" if "lr" in inspect.signature(fn).parameters else "and it takes no lr"
            raise UsageError(
                "--optimizer",
                f"{spec or name_of(fn)} is a class built as {fn.__name__}(params, lr=--lr), {why} ({e})",
                f"name a factory instead: def opt(params): return {fn.__name__}(params, ...)",
            ) from None
        except ValueError:  # no signature to read: the build says it
            pass
        return fn

    def shaping_fn(self, spec: str) -> Callable[..., Any]:
        """The shaping function: the object given, else ``spec`` imported; its signature checked."""
        fn = self.shaping if self.shaping is not None else load_callable(spec, "--shaping")
        check_call(fn, "shaping", spec)
        check_state_methods(fn, "shaping", spec or name_of(fn))
        return CheckedShaping(fn, spec or name_of(fn))

    def fitness_fn(self, spec: str) -> Callable[..., Any]:
        """The fitness function: the object given, else ``spec`` imported; its signature checked."""
        fn = self.fitness if self.fitness is not None else load_callable(spec, "--fitness")
        check_call(fn, "fitness", spec)
        return fn

    def model_factory(self, spec: str) -> Callable[..., Any]:
        """``env -> nn.Module``: a module given as such is returned as it is."""
        given = self.model
        if isinstance(given, nn.Module):
            return lambda env: given
        fn = given if given is not None else load_callable(spec, "--model")
        check_call(fn, "model", spec)
        return fn

    def evaluate_fn(self, spec: str) -> Callable[..., Any] | None:
        """``evaluate(model)``: the object given; else the ``evaluate`` beside an imported fitness; else None."""
        if self.evaluate is not None or self.fitness is not None:
            fn = self.evaluate
        else:
            load_callable(spec, "--fitness")  # the module the user named, where evaluate() sits beside it
            module = spec.partition(":")[0]
            fn = getattr(sys.modules["__main__" if module.startswith("__main__[") else module], "evaluate", None)
            fn = fn if callable(fn) else None
        if fn is not None:
            check_call(fn, "evaluate", f"{spec.partition(':')[0]}:evaluate" if self.evaluate is None else name_of(fn))
        return fn
