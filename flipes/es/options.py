"""FlipES's constructor arguments, checked up front: a wrong type or an unworkable combination would otherwise fail
far from the call, be truncated silently, or give a run that never moves. Each raises naming the fix.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from flipes.errors import call_mismatch
from flipes.es.checks import integer, nonnegative
from flipes.es.shaping import ars as shaping_ars
from flipes.es.shaping import centered_ranks, z_score


@dataclass(frozen=True)
class Options:
    """The arguments as FlipES keeps them: integers as ``int``, flags as ``bool``, ``lr`` defaulted."""

    popsize: int
    seed: int
    groups: int
    mirrored: bool
    track_best: bool
    maximize: bool
    hold_noise: bool
    lr: float
    given_lr: bool  # lr was given (not defaulted): an optimizer factory must then set it
    weight_decay: float
    noise_rank: int | None  # None: full rank (0 given means it too)
    sigma_lr: float


def flag(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` where it is one (numpy's too), else a ``TypeError`` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def sigma_value(sigma: float | Callable[[int], float], generation: int) -> float:
    """σ of ``generation``: the number, or the schedule called; a finite number > 0, else an error."""
    given = sigma(generation) if callable(sigma) else sigma
    try:  # a number of any kind (numpy's, a 0-d tensor); not a bool (sigma=True is 1.0) or a string float() parses
        value = float(given) if not isinstance(given, bool | np.bool_ | str | bytes) else None
    except (TypeError, ValueError):
        value = None
    if value is None:
        at = f" (the schedule's value at generation {generation})" if callable(sigma) else ""
        raise TypeError(f"sigma must be a number > 0 or a schedule generation -> σ, got {given!r}{at} ({type(given).__name__})")
    if not (value > 0 and math.isfinite(value)):
        if callable(sigma):  # only a schedule's value depends on the generation
            raise ValueError(
                f"sigma must be a finite number > 0, got {value} from the schedule at generation {generation}: keep its "
                "values finite and > 0, e.g. with a floor, max(σ_g, 1e-3), as flipes.search.SigmaDecay(sigma, decay, min) does"
            )
        mean = " (the mean network is the model called outside es.population())" if value == 0 else ""
        raise ValueError(
            f"sigma must be a finite number > 0, got {value}: pass a positive σ, e.g. sigma=0.05 (the default){mean}"
        )
    return value


BOTH_STATE_METHODS = "define both (state_dict() returning tensors, numbers, strings, lists and dicts), or neither"


def half_state_methods(obj: Any) -> str | None:
    """What is wrong where ``obj`` (a shaping of one's own) has one of ``state_dict`` and ``load_state_dict`` without
    the other, None otherwise: a checkpoint saves what the first returns and a resume hands it to the second, so with
    one alone a resume fails or starts it afresh."""
    has = [callable(getattr(obj, name, None)) for name in ("state_dict", "load_state_dict")]
    if has[0] == has[1]:
        return None
    missing = "load_state_dict(state)" if has[0] else "state_dict()"
    return f"has {'state_dict' if has[0] else 'load_state_dict'} but no {missing}: a resume could not restore its state"


def checked_options(
    popsize: Any,
    sigma: float | Callable[[int], float],
    lr: float | None,
    seed: Any,
    groups: Any,
    *,
    mirrored: Any,
    shaping: Any,
    weight_decay: float,
    comm_mode: str,
    noise_rank: int | None,
    sigma_lr: float,
    track_best: Any,
    maximize: Any,
    hold_noise: Any,
) -> Options:
    """FlipES's arguments (but the model and comm) checked, in the order FlipES always checked them."""
    popsize, seed, groups = integer("popsize", popsize), integer("seed", seed), integer("groups", groups)
    mirrored = flag("mirrored", mirrored)
    track_best, maximize, hold_noise = flag("track_best", track_best), flag("maximize", maximize), flag("hold_noise", hold_noise)
    own = {"centered_rank": "centered_ranks", "centered_ranks": "centered_ranks", "centered": "centered_ranks",
           "z_score": "z_score", "raw": "raw", "ars": "ars"}  # fmt: skip
    if isinstance(shaping, str) and shaping.lower().replace("-", "_") in own:  # a name, as --shaping or EvoTorch take it
        raise TypeError(
            f"shaping must be a function fitness (N,) -> weights (N,), got the name {shaping!r}: pass "
            f"shaping=flipes.shaping.{own[shaping.lower().replace('-', '_')]}"
        )
    if not callable(shaping):
        raise TypeError(
            f"shaping must be a function fitness (N,) -> weights (N,), e.g. flipes.shaping.centered_ranks, "
            f"got {shaping!r} ({type(shaping).__name__})"
        )
    if (why := call_mismatch(shaping, ("fitness",))) is not None:  # else a bare TypeError at the first tell
        name = getattr(shaping, "__qualname__", type(shaping).__qualname__)
        raise TypeError(
            f"shaping {name} cannot be called as shaping(fitness) ({why}): define it with the fitness as its one "
            "argument, fitness (N,) -> weights (N,)"
        )
    if callable(sigma) and (why := call_mismatch(sigma, ("generation",))) is not None:  # else at the first population
        name = getattr(sigma, "__qualname__", type(sigma).__qualname__)
        raise TypeError(
            f"sigma schedule {name} cannot be called as sigma(generation) ({why}): define it with the generation as its "
            "one argument, generation -> σ"
        )
    if (half := half_state_methods(shaping)) is not None:
        name = getattr(shaping, "__qualname__", type(shaping).__qualname__)
        raise TypeError(f"shaping {name} {half}; {BOTH_STATE_METHODS}")
    given_lr = lr is not None
    lr, weight_decay = nonnegative("lr", 0.03 if lr is None else lr), nonnegative("weight_decay", weight_decay)
    if popsize < 1 or groups < 1 or popsize % groups:
        raise ValueError(f"popsize={popsize} must be a positive multiple of groups={groups}")
    if popsize > 2**24:  # flipes train's --popsize bound; 10**30 overflowed a C size below
        raise ValueError(f"popsize={popsize} is beyond any use (at most {2**24:,}); is it a typo?")
    if mirrored and (popsize // groups) % 2:
        raise ValueError(
            f"mirrored sampling pairs members, but each group has popsize/groups = {popsize // groups} "
            "members (odd); use an even popsize per group or mirrored=False"
        )
    if noise_rank is not None:
        try:  # any integer type (numpy's too), not bools or floats
            rank = operator.index(noise_rank) if not isinstance(noise_rank, bool) else -1
        except TypeError:
            rank = -1
        if rank < 0:
            raise ValueError(f"noise_rank must be None or 0 (full-rank noise) or an integer >= 1, got {noise_rank!r}")
        noise_rank = rank or None  # 0: full rank, as --noise-rank 0
    sigma_lr = nonnegative("sigma_lr", sigma_lr)  # numpy's float32 too; 0 keeps σ fixed
    if sigma_lr > 0 and callable(sigma):
        raise ValueError("sigma_lr > 0 adapts σ from its starting value: give sigma as a number, not a schedule")
    if sigma_lr > 0 and noise_rank is not None:
        raise ValueError(
            "sigma_lr > 0 needs full-rank noise (noise_rank=None): the score of σ is the Gaussian one, and "
            "low-rank ε is not Gaussian"
        )
    if getattr(shaping, "func", shaping) is shaping_ars and not mirrored:  # functools.partial(ars, top=b) too
        raise ValueError(
            "shaping=flipes.shaping.ars compares the returns of mirrored pairs (2k, 2k+1): with mirrored=False they "
            "are unrelated members; use mirrored=True"
        )
    if popsize == 1 and getattr(shaping, "func", shaping) in (centered_ranks, z_score):
        raise ValueError(
            f"popsize=1 with shaping=flipes.shaping.{getattr(shaping, 'func', shaping).__name__}: a single member's "
            "shaped fitness is always 0, so tell would never move the parameters (nor σ); use popsize >= 2, or "
            "shaping=flipes.shaping.raw (one member's fitness as it is)"
        )
    if getattr(shaping, "func", shaping) is shaping_ars and sigma_lr > 0:
        raise ValueError(
            "sigma_lr > 0 with shaping=flipes.shaping.ars: ARS weights a mirrored pair +w and -w and the twins share "
            "‖z‖², so the log-σ gradient is zero and σ would never move (and ARS's step lr·σ assumes a fixed σ); use "
            "sigma_lr=0 with ars, or adapt σ with centered_ranks or z_score shaping (as --algo pgpe does)"
        )
    sigma_value(sigma, 0)  # validate now, not at the first generation
    if comm_mode not in ("allreduce", "seeds"):
        raise ValueError(f"comm_mode must be 'allreduce' or 'seeds', got {comm_mode!r}")
    return Options(
        popsize, seed, groups, mirrored, track_best, maximize, hold_noise, lr, given_lr, weight_decay, noise_rank, sigma_lr
    )
