"""Checks of what a user hands FlipES: option values and each generation's fitness.

Each raises at the call that was wrong, naming the problem and the fix, before anything changes.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import operator
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor


def as_index(value: Any) -> int | None:
    """``value`` as an ``int`` where it is of an integer type (numpy's, a 0-d integer tensor), else ``None``:
    not a bool, float or string, which ``int()`` would silently truncate or parse."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (Tensor, np.ndarray)) and value.dtype in (torch.bool, np.bool_):  # operator.index takes torch's
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def integer(name: str, value: Any) -> int:
    """``value`` as an ``int``: any integer type (numpy's too), but not a bool, float or string, which
    ``int()`` would silently truncate or parse."""
    index = as_index(value)
    if index is not None:
        return index
    raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); pass {name}=int(...)")


# what a negative value of an option was likely meant to do, and how flipes does it: a negative step size is how some
# libraries minimize, and flipes always climbs the fitness
NEGATIVE_FIX = {
    "lr": "flipes climbs the fitness (higher is better): to minimize a loss, return -loss from the fitness or build "
    "FlipES(..., maximize=False), with a positive lr",
}


def nonnegative(name: str, value: Any) -> float:
    """``value`` as a ``float``, checked to be a finite real number >= 0 (numpy's too, not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value >= 0):
        fix = NEGATIVE_FIX.get(name, "") if value < 0 else ""
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}" + (f"; {fix}" if fix else ""))
    return float(value)


# how to mark members that broke a constraint or could not be scored (NaN/inf), ranked below every other
INFEASIBLE_FIX = "infeasible members rank last with flipes.shaping.feasible_first(fitness, violation, worst)"


class NonFiniteFitness(ValueError):
    """A fitness with NaN or inf values (:func:`check_fitness`); ``what`` says which, without the fix."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}; the fitness function must return finite values (clip or penalize instead of returning nan/inf; "
            f"{INFEASIBLE_FIX})"
        )
        self.what = what

    def __reduce__(self) -> tuple[type, tuple[str]]:  # pickled (to another process) with its own argument
        return type(self), (self.what,)


def check_fitness_fn(fitness_fn: Any) -> None:
    """``es.step``'s argument: a function that takes ``(model, pop)`` (a builtin without a signature: its call says it)."""
    if not callable(fitness_fn):
        raise TypeError(f"es.step(fitness_fn): got {type(fitness_fn).__name__}, not a function fitness_fn(model, pop)")
    try:
        inspect.signature(fitness_fn).bind(None, None)
    except TypeError as e:
        raise TypeError(
            f"es.step(fitness_fn): fitness_fn takes other arguments ({e}); define it as fitness_fn(model, pop) -> "
            "Tensor[pop.size], one fitness per member of pop"
        ) from None
    except ValueError:  # a builtin without a signature: let the call say it
        pass


OBJECTIVES_FIX = (
    "FlipES ranks one number per member: combine each member's values into one, a weighted sum "
    "f @ f.new_tensor([1.0, -0.1]) (its dtype and device) or a penalty reward - lam * (cost - budget).clamp(min=0), "
    "and log the others yourself (README: 'Several objectives and constraints')"
)


def _entries(value: Any) -> int | None:
    """The number of entries of a 1-D tensor or array (one value per member of something), else ``None``."""
    shape = getattr(value, "shape", None)
    return shape[0] if isinstance(value, Tensor | np.ndarray) and len(shape) == 1 else None


def objectives_fix(value: Any, n: int) -> str | None:
    """What to do with ``value``, a fitness of ``n`` members holding several values per member (objectives, constraint
    costs, metrics): as an ``(n, k)`` or ``(k, n)`` table, ``k`` tensors of ``n`` values, or a dict of them, as
    EvoTorch's multi-objective problems and ``eval_data`` keep them; a column ``(n, 1)`` is flattened. ``None``
    where ``value`` is none of these."""
    shape = tuple(getattr(value, "shape", ())) if isinstance(value, Tensor | np.ndarray) else None
    if shape == (n, 1):
        return "this is a column (N, 1): flatten it with fitness.flatten()"
    if shape is not None and len(shape) == 2 and n in shape and shape != (n, n):
        k = shape[1] if shape[0] == n else shape[0]
        return f"{k} values per member (shape {shape}: objectives, costs or metrics?); {OBJECTIVES_FIX}"
    if isinstance(value, dict) and value and all(_entries(v) == n for v in value.values()):
        keys = ", ".join(map(repr, list(value)[:4]))
        return f"a dict of {len(value)} tensors of {n} values each ({keys}); {OBJECTIVES_FIX}"
    if isinstance(value, list | tuple) and len(value) > 1 and all(_entries(v) == n for v in value):
        what = f"a {type(value).__name__} of {len(value)} tensors of {n} values each"
        return f"{what} (objectives, costs or metrics?); {OBJECTIVES_FIX}"
    return None


def check_fitness(fitness: Tensor | np.ndarray | Iterable[float], members: range, popsize: int) -> Tensor:
    """``fitness`` of this process's ``members`` (global indices) as a float64 CPU tensor of shape
    ``(len(members),)``, checked to be finite real numbers; ``popsize`` (all processes) names the
    likely mistake of sizing it by ``es.popsize`` on one of several processes."""
    if isinstance(fitness, Iterator):  # a generator or map, as Iterable[float] allows: read once, in order
        fitness = list(fitness)
    try:  # a tensor stays where it is until the one copy below; numbers and arrays are read on the host
        listed = isinstance(fitness, list | tuple)  # of NumPy arrays: torch's "extremely slow" note is for millions, not N
        with warnings.catch_warnings() if listed else contextlib.nullcontext():
            if listed:
                warnings.filterwarnings("ignore", message="Creating a tensor from a list of numpy.ndarrays")
            f = fitness.detach() if isinstance(fitness, Tensor) else torch.as_tensor(fitness, device="cpu")
            if f.is_floating_point() and not isinstance(fitness, Tensor | np.ndarray):
                # Python floats: as float64, not torch's default float32, which would round members apart into ties
                f = torch.as_tensor(fitness, dtype=torch.float64, device="cpu")
    except (TypeError, RuntimeError, ValueError):
        f = None
    if f is None or f.dtype.is_complex or f.dtype == torch.bool:
        several = objectives_fix(fitness, len(members))
        if several is not None:  # not the parts' fitness: each tensor holds a value of every member
            raise TypeError(f"fitness must be one real number per member, got {several}")
        parts = isinstance(fitness, list | tuple) and any(isinstance(x, Tensor) and x.dim() > 0 for x in fitness)
        raise TypeError(
            f"fitness must be real numbers, one per member (a Tensor, array or list), got {type(fitness).__name__}"
            + (f" of {f.dtype}" if f is not None else "")
            + (
                f" of {len(fitness)} tensors, shapes {', '.join(str(tuple(x.shape)) for x in fitness[:3])}"
                f"{', ...' if len(fitness) > 3 else ''}; join the parts' fitness into one: torch.cat(fitness)"
                if parts
                else ""
            )
            + (
                "; score a pass/fail per member as numbers: fitness.float() (True: 1)"
                if f is not None and f.dtype == torch.bool
                else ""
            )
        )
    kind = "a meta" if f.is_meta else "a nested" if f.is_nested else "a sparse" if f.layout != torch.strided else ""
    if kind:  # their values cannot be read as one dense row (torch's own errors come from deep inside the shaping)
        fix = {"a meta": "compute it from tensors that hold values (a meta tensor has only a shape)",
               "a nested": "one value per member as one tensor: torch.stack of the members' values",
               "a sparse": "fitness.to_dense()"}[kind]  # fmt: skip
        raise TypeError(f"fitness must be real numbers, one per member, got {kind} tensor; {fix}")
    f = f.to("cpu", torch.float64)
    n = len(members)
    if f.shape != (n,):
        whole = f.shape == (popsize,) and popsize != n
        several = objectives_fix(f, n)
        raise ValueError(
            f"fitness has shape {tuple(f.shape)}, but this process evaluates {n} members: "
            f"return one value per member, a Tensor of shape ({n},)"
            + (f"; inputs are sized by pop.size ({n} here), not es.popsize ({popsize}, all processes)" if whole else "")
            + (
                "; a loss averaged over every row (a Hugging Face model's .loss given labels=) is one number for all "
                "members: reduce each member's own rows of the logits, as in README's 'Fine-tuning a Hugging Face "
                "language model'"
                if f.dim() == 0 and n > 1
                else ""
            )
            + (f"; {several}" if several else "")
        )
    # the usual case in one sum (finite only if every value is; one that overflows is checked value by value); the
    # members named only when some are not
    if not math.isfinite(f.sum().item()) and not torch.isfinite(f).all():
        bad = (~torch.isfinite(f)).nonzero().flatten()
        shown = ", ".join(f"{members[i]}={f[i].item()}" for i in bad[:5].tolist())
        raise NonFiniteFitness(f"fitness of {len(bad)} member(s) is not finite ({shown}{', ...' if len(bad) > 5 else ''})")
    return f


# where a shaping returned fewer weights than members: it read values kept for this process's or part's members
GATHER_FIX = (
    "it gets every member's fitness, on every process, where values a fitness function kept (a cost) hold only its "
    "process's or part's members: gather them first (README: 'Several objectives and constraints')"
)


def check_weights(weights: Any, fitness: Tensor) -> Tensor:
    """What a shaping function returned for ``fitness`` (N,), as a tensor of N finite weights: a tensor as it
    is, an array or list (``scipy.stats.rankdata``'s ranks, say) in ``fitness``'s dtype and device."""
    if isinstance(weights, np.ndarray | list | tuple):
        try:
            weights = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=fitness.dtype, device=fitness.device)
        except (TypeError, ValueError):
            pass  # not numbers: named below
    if not isinstance(weights, Tensor) or not (weights.is_floating_point() or weights.dtype in (torch.int32, torch.int64)):
        shown = type(weights).__name__ + (f" of {weights.dtype}" if isinstance(weights, Tensor | np.ndarray) else "")
        raise TypeError(f"the shaping function must return weights (N,) as a Tensor or array of numbers, got {shown}")
    # finite: their sum is (else, an overflow aside, some value is not: checked value by value)
    if weights.shape != fitness.shape or not (math.isfinite(weights.sum().item()) or torch.isfinite(weights).all()):
        fewer = weights.dim() == 1 and 0 < weights.shape[0] < fitness.shape[0]
        raise ValueError(
            f"the shaping function must map fitness {tuple(fitness.shape)} to finite weights of that shape, "
            f"got shape {tuple(weights.shape)}"
            + ("" if weights.shape != fitness.shape else " with non-finite values")
            + (f"; {GATHER_FIX}" if fewer else "")
        )
    return weights


def refuse_unsynced_ddp(model: torch.nn.Module, comm: object | None) -> None:
    """Raise where ``model`` holds a ``DistributedDataParallel`` over several processes and FlipES got no ``comm``: DDP
    keeps its replicas equal by averaging gradients in backward, which ES never runs, so each process would step its own
    ĝ and the replicas drift apart, silently. ``comm=flipes.dist.SerialComm()`` says independent runs are meant."""
    if comm is not None or not torch.distributed.is_available():
        return
    from torch.nn.parallel import DistributedDataParallel

    for name, module in model.named_modules():
        if isinstance(module, DistributedDataParallel):
            size = torch.distributed.get_world_size(module.process_group)
            if size > 1:
                where = f"model.{name}" if name else "model"
                raise ValueError(
                    f"FlipES({where}): a DistributedDataParallel over {size} processes, whose gradient sync runs in "
                    "backward, which ES never runs: each process would step its own ES gradient and the replicas drift "
                    f"apart; give FlipES the unwrapped {where}.module and the processes as comm= (mpiexec -n {size} "
                    f"with comm=flipes.dist.world(), groups >= {size}), or comm=flipes.dist.SerialComm() for "
                    "independent runs on purpose"
                )
