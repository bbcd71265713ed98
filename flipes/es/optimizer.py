"""The optimizer FlipES steps: built over exactly the evolved parameters, and what of it a checkpoint or the
processes' comparison records.

``tell`` writes ``-ĝ`` to every evolved parameter's ``.grad`` and steps this optimizer: any ``torch.optim``
optimizer then climbs the fitness (Adam by default, as Salimans et al., 2017, arXiv:1703.03864).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def optimizer_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's settings (lr, betas, ...) without its parameters: what a callback may change. Only plain
    values (numbers, flags, text, tuples of numbers, tensors): an optimizer of another library may keep a function
    in a group, which cannot be pickled to the other ranks (and whose text, its address, differs between them where
    the ranks compare their settings at the first tell). A tensor comes as a copy on the CPU: one on ``cuda:0`` sent to
    the other ranks would open a CUDA context on GPU 0 in each of them."""
    return [
        {
            k: v.detach().cpu().clone() if isinstance(v, Tensor) else v
            for k, v in group.items()
            if k != "params" and _plain_setting(v)
        }
        for group in optimizer.param_groups
    ]


def step_sizes(optimizer: torch.optim.Optimizer) -> list[float]:
    """The distinct learning rates of ``optimizer``'s param groups, sorted; a group without one, or with ``None``
    (Hugging Face's Adafactor at its relative step), has none."""
    return sorted({float(g["lr"]) for g in optimizer.param_groups if g.get("lr") is not None})


def _plain_setting(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(isinstance(v, int | float | bool) for v in value)
    return value is None or isinstance(value, int | float | bool | str | Tensor)


def default_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where torch has one for these parameters (a few × fewer ops
    per step, which matters when a generation is short)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """``module.Class`` of an optimizer, as a state dict records it."""
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def unsteppable(cls: type[torch.optim.Optimizer]) -> str | None:
    """Why ``tell`` cannot step an optimizer of ``cls`` (None where it can): a ``step()`` that needs a closure recomputing
    the loss (LBFGS: tell writes the ES gradient, there is no loss to recompute), or SparseAdam (the ES gradient is
    dense). Either failed at the first tell in a traceback."""
    if issubclass(cls, torch.optim.SparseAdam):
        return "SparseAdam steps sparse gradients, and the ES gradient is dense"
    closure = inspect.signature(cls.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        return f"{cls.__name__}.step needs a closure that recomputes the loss, and ES has none (tell writes ĝ)"
    return None


def refuse_flags(optimizer: torch.optim.Optimizer) -> None:
    """Raise for a param group that ``tell``'s step cannot honour: ``maximize=True`` would step along ``.grad``, which
    holds ``-ĝ``, so downhill in fitness, silently; ``differentiable=True`` fails at the first step with torch's "a leaf
    Variable that requires grad is being used in an in-place operation" (ES has no graph through the step)."""
    name = type(optimizer).__name__
    if any(group.get("maximize") for group in optimizer.param_groups):
        raise ValueError(
            f"optimizer: {name}(maximize=True) would step downhill in fitness: tell writes -ĝ, the gradient of the loss "
            f"-J, to .grad, so the optimizer minimizing it climbs the fitness; build it without maximize=True (to "
            "minimize a loss of your own, pass FlipES(..., maximize=False) and tell the loss)"
        )
    if any(group.get("differentiable") for group in optimizer.param_groups):
        raise ValueError(
            f"optimizer: {name}(differentiable=True) steps through autograd, and ES's step has no graph to keep; build it "
            "without differentiable=True"
        )


def build_optimizer(
    params: list[nn.Parameter],
    optimizer: OptimizerFactory | type[torch.optim.Optimizer] | None,
    lr: float,
    given_lr: bool,
    names: Callable[[list[Tensor]], str],
    *,
    assigned: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer over exactly ``params``, the evolved ones (``names`` names them in errors): tell writes every
    evolved parameter's ``.grad``, so one left out would never move, and one of another module would step on a stale
    ``.grad``. ``assigned``: ``optimizer`` wraps one built by hand for ``es.optimizer = ...``, whose fix is named so."""
    if optimizer is None:
        return default_optimizer(params, lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        cls = type(optimizer)
        where = "torch.optim" if getattr(torch.optim, cls.__name__, None) is cls else cls.__module__
        raise TypeError(
            f"optimizer must be a function params -> torch.optim.Optimizer, got an instance of {cls.__name__}; FlipES "
            f"builds it over the parameters it evolves: pass optimizer=lambda params: {where}.{cls.__name__}(params, lr=...)"
        )
    if isinstance(optimizer, str):  # a name, as evosax's opt_name or EvoTorch's optimizer="clipup" give it
        named = {n.lower(): f"torch.optim.{n}" for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)}
        named["clipup"] = "flipes.optim.ClipUp"
        cls = named.get(optimizer.lower().replace("-", "").replace("_", ""))
        if cls is not None:
            raise TypeError(
                f"optimizer must be a function params -> torch.optim.Optimizer or an optimizer class, got the name "
                f"{optimizer!r}: pass optimizer={cls} (built at lr=), or a factory with its own settings, "
                f"optimizer=lambda params: {cls}(params, lr=...)"
            )
    if not callable(optimizer):
        raise TypeError(
            f"optimizer must be a function params -> torch.optim.Optimizer, e.g. lambda params: torch.optim.SGD(params, "
            f"lr=0.1), got {optimizer!r} ({type(optimizer).__name__})"
        )
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        built = optimizer(params, lr=lr)  # a class: at FlipES's lr, not the class's own default
    else:
        built = optimizer(params)
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(
            f"the optimizer factory returned {type(built).__name__}, not a torch.optim.Optimizer; return the optimizer "
            "it builds, e.g. optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        )
    problem = unsteppable(type(built))
    if problem is not None:
        raise ValueError(f"optimizer: {problem}; use a first-order optimizer of dense gradients, e.g. torch.optim.Adam")
    refuse_flags(built)
    held = [p for group in built.param_groups for p in group["params"]]
    evolved, ids = {id(p) for p in params}, {id(p) for p in held}
    missing = [p for p in params if id(p) not in ids]
    others = [p for p in held if id(p) not in evolved]
    if missing or others:
        kind = type(built)
        home = "torch.optim" if getattr(torch.optim, kind.__name__, None) is kind else kind.__module__
        raise ValueError(
            (
                "the optimizer must hold exactly the parameters FlipES evolves (es.params): "
                if assigned
                else "the optimizer factory must build its optimizer over exactly the parameters it is given (es.params): "
            )
            + "; ".join(f"{what} {len(ps)}: {names(ps)}" for what, ps in (("it leaves out", missing), ("it adds", others)) if ps)
            + (
                f"; build it over them: es.optimizer = {home}.{kind.__name__}(es.params, ...)"
                if assigned
                else "; build it from them, e.g. optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
            )
        )
    steps = step_sizes(built)
    if given_lr and not isinstance(optimizer, type) and steps != [lr]:
        sets = f"sets lr {', '.join(map(str, steps))}" if steps else "sets no lr"
        name = type(built).__name__
        as_class = f", or pass the class (optimizer=torch.optim.{name}) to build it at lr={lr}"
        raise ValueError(
            f"lr={lr} and an optimizer factory that {sets} ({name}): the factory's optimizer steps, so lr= would be "
            "ignored; drop lr= and set it in the factory" + (as_class if getattr(torch.optim, name, None) is type(built) else "")
        )
    return built


def check_placement(
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    placement: list[tuple[torch.dtype, torch.device]] | None,
    names: Callable[[list[Tensor]], str],
) -> None:
    """Raise if the model moved to another dtype or device since the last ``tell`` stepped the optimizer
    (which then holds state, Adam's moments, made for the old placement): torch's step fails with
    "expected scalar type Double but found Float" or a device mismatch. Before the first ``tell`` a move
    is fine: the state is made from the parameters then."""
    if placement is None or not optimizer.state:
        return
    for p, (dtype, device) in zip(params, placement, strict=True):
        if (p.dtype, p.device) != (dtype, device):
            raise RuntimeError(
                f"{names([p])} moved to {p.dtype} on {p.device} after the optimizer's state was made "
                f"({dtype} on {device}); move the model before the first tell(), or build a new FlipES for the "
                "moved model and load this one's state_dict() into it (torch casts the optimizer's state)"
            )
