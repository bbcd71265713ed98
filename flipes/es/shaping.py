"""Fitness shaping: plain functions from raw fitness ``(N,)`` to the weights of the ES gradient.

Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
2017 (arXiv:1703.03864): centered ranks make the update invariant to monotone transforms of the
fitness and robust to outliers.

Each takes the fitness as a Tensor, a numpy array or a list of numbers, and returns a Tensor: so they compose in a
shaping of one's own (NSR-ES's mean of the reward's and the novelty's ranks,
``lambda f: (centered_ranks(reward) + centered_ranks(novelty)) / 2``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from flipes.optim import unit_factor


def _tensor(fitness: Tensor | ArrayLike) -> Tensor:
    """``fitness`` as a tensor: a numpy array or a list of numbers (a loop of one's own combining scores, NSR-ES's
    reward and novelty ranks) as ``torch.as_tensor`` makes it; a value of no numbers, or not one number per member,
    is named."""
    if not isinstance(fitness, Tensor):
        try:
            fitness = torch.as_tensor(np.asarray(fitness))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                "a shaping function takes fitness (N,) as a Tensor, a numpy array or a list of numbers, "
                f"got {type(fitness).__name__}"
            ) from None
    if fitness.dim() != 1:  # ranks of a column or of a table came out garbled or as a bare indexing error
        raise ValueError(
            f"a shaping function takes fitness (N,), one value per member, got shape {tuple(fitness.shape)}: "
            "pass a 1-D tensor (f.flatten() for a column (N, 1); reduce each member's values first, e.g. f.mean(1))"
        )
    return fitness


def _floating(fitness: Tensor | ArrayLike) -> Tensor:
    """``fitness`` as a tensor, integer scores (counts, pass/fail sums) in torch's default dtype: a mean rank of tied
    values is a half, and a std is not defined for integers."""
    fitness = _tensor(fitness)
    return fitness if fitness.is_floating_point() else fitness.to(torch.get_default_dtype())


def _wide(fitness: Tensor) -> Tensor:
    """``fitness`` in float32 at least: weights of N members in half precision overflow (float16 holds no N·x past
    65,504: ars's weights at N = 65,536) or round."""
    return fitness.to(torch.promote_types(fitness.dtype, torch.float32))


def _unit_scaled(fitness: Tensor) -> Tensor:
    """``fitness`` times the power of two that brings its largest magnitude to [0.5, 1), for the shapings invariant to
    the fitness's scale (z_score, ars): the squared deviations of float64 fitness past ~1e154 overflowed and below
    ~1e-154 underflowed, and float32 differences ``r+ - r-`` past 1.7e38 overflowed, so the weights came out all 0 (no
    step) or NaN. A power of two changes no bit of the weights where those were in range."""
    factor = unit_factor([fitness], [fitness.dtype])
    return fitness if factor is None else fitness * factor


def _refuse_non_finite(fitness: Tensor, name: str, infinities: bool = False) -> None:
    """Raise naming the members whose fitness is NaN (or infinite, unless ``infinities`` may be ranked): a NaN has no
    rank (sorted last, it took the best one) and makes no mean or std (z_score and ars gave every member 0)."""
    total = fitness.sum().item()  # the usual case in one sum: finite only where every value is (NaN only where one is)
    if math.isfinite(total) or (infinities and not math.isnan(total)):
        return
    bad = fitness.isnan() if infinities else ~fitness.isfinite()
    if bool(bad.any()):
        at = bad.nonzero().flatten()
        shown = ", ".join(f"{i}={fitness[i].item()}" for i in at[:5].tolist()) + (", ..." if len(at) > 5 else "")
        raise ValueError(
            f"{name}: fitness of {len(at)} member(s) is {'NaN' if infinities else 'not finite'} ({shown}); give such "
            "members a finite worst value first (FlipES.tell refuses them too), or rank infeasible members last with "
            "flipes.shaping.feasible_first(fitness, violation, worst)"
        )


def centered_ranks(fitness: Tensor | ArrayLike) -> Tensor:
    """Ranks scaled to ``[-0.5, 0.5]``, ``rank / (N - 1) - 0.5``; tied fitness values share their mean rank (so a
    mirrored pair with equal fitness contributes nothing). Infinities rank at the ends; a NaN is an error. In the
    fitness's dtype, float32 at least (half-precision fitness gets float32 weights).

    evosax's ``centered_rank``, EvoTorch's ``ranking_method="centered"`` and OpenAI's ES starter compute the same
    values for distinct fitness, but evosax up to 0.1.x, EvoTorch and the starter rank ties by position (an argsort),
    so with ties (CartPole's many returns of 500) their weights differ from these; evosax 0.2's
    ``centered_rank_fitness_shaping_fn`` (``rankdata``) gives ties their mean rank, as here."""
    fitness = _floating(fitness)
    _refuse_non_finite(fitness, "centered_ranks", infinities=True)
    n = fitness.numel()
    if n < 2:
        return torch.zeros_like(fitness)
    values, order = fitness.sort()
    _, run, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    # runs of ties: (first + last) / 2, in float32 at least: half-integers are exact there up to 2²³, where a half default
    # dtype would round them (float16 from 2¹⁰)
    exact = torch.promote_types(torch.get_default_dtype(), torch.float32)
    mean_rank = counts.cumsum(0).to(exact) - (counts + 1).to(exact) / 2
    # the weights too: float16 holds no rank past 65,504 (inf) and rounds those past 2¹¹, bfloat16 past 2⁸ (ties made)
    ranks = torch.empty_like(fitness, dtype=torch.promote_types(fitness.dtype, torch.float32))
    ranks[order] = mean_rank[run].to(ranks.dtype)
    return ranks / (n - 1) - 0.5


def z_score(fitness: Tensor | ArrayLike) -> Tensor:
    """``(f - mean) / std``; zeros when all values are equal. A NaN or infinity is an error. Float32 at least."""
    fitness = _wide(_floating(fitness))
    _refuse_non_finite(fitness, "z_score")
    fitness = _unit_scaled(fitness)
    std = fitness.std(unbiased=False)
    # equal values by comparison, not by std: their rounded mean can be an ulp off them (0.1 three times), and that
    # rounding over a std as small gave every member ±1
    if not (std > 0 and fitness.amax() > fitness.amin()):
        return torch.zeros_like(fitness)
    return (fitness - fitness.mean()) / std


def raw(fitness: Tensor | ArrayLike) -> Tensor:
    """No shaping: the plain Monte-Carlo estimator of ``∇ E[F(θ + σu)]``."""
    return _tensor(fitness).clone()


def ars(fitness: Tensor | ArrayLike, top: int | None = None) -> Tensor:
    """Augmented Random Search weights (Mania, Guy & Recht, NeurIPS 2018, arXiv:1803.07055, V1-t/V2-t).

    Mirrored pairs ``(2k, 2k+1)`` hold the returns ``r+`` and ``r-`` of direction ``k``. The ``top``
    directions by ``max(r+, r-)`` (all if ``None``) get ``w_2k = -w_2k+1 = N (r+ - r-) / (2 b σ_R)``,
    the others 0, with ``σ_R`` the standard deviation of the ``2b`` returns used. FlipES's gradient
    then is ``Σ_top (r+ - r-) u_k / (b σ_R σ)``, so SGD with ``lr = α·σ`` takes exactly ARS's step
    ``α / (b σ_R) Σ_top (r+ - r-) δ_k``. Use with ``mirrored=True``:
    ``FlipES(..., shaping=functools.partial(ars, top=b))``. A NaN or infinity is an error. Float32 at least.
    """
    fitness = _wide(_floating(fitness))
    _refuse_non_finite(fitness, "ars")
    fitness = _unit_scaled(fitness)
    n = fitness.numel()
    if n % 2:
        raise ValueError(f"ars shaping pairs mirrored members (2k, 2k+1); got {n} fitness values (odd): use mirrored=True")
    pairs = n // 2
    b = pairs if top is None else top
    if not 1 <= b <= pairs:
        raise ValueError(f"ars shaping: top must be 1 ... {pairs} (the number of mirrored pairs), got {top}")
    plus, minus = fitness[0::2], fitness[1::2]
    keep = torch.maximum(plus, minus).topk(b).indices
    used = torch.cat((plus[keep], minus[keep]))
    sigma_r = used.std(unbiased=False)
    weights = torch.zeros_like(fitness)
    if sigma_r > 0:
        w = n * (plus[keep] - minus[keep]) / (2 * b * sigma_r)
        weights[2 * keep], weights[2 * keep + 1] = w, -w
    return weights


def feasible_first(fitness: Tensor | ArrayLike, violation: Tensor | ArrayLike, worst: float, maximize: bool = True) -> Tensor:
    """One fitness per member that ranks as Deb's feasibility rules (Deb, "An efficient constraint handling method for
    genetic algorithms", Comput. Methods Appl. Mech. Engrg. 186, 2000): every feasible member above every infeasible
    one, feasible members by their fitness, infeasible ones by their violation alone (less is better).

    Not a shaping function: its result is the fitness to tell (or to return from ``flipes.train``'s fitness), which
    the default shaping, centered ranks, then ranks. ``worst - violation`` for an infeasible member, its fitness
    unchanged otherwise: a function of each member alone, so every process of an MPI run, and every part of a
    population, computes the same values as one process would (the lowest feasible fitness of the generation would
    differ between processes).

    Args:
        fitness: ``(N,)``, or one number, higher is better (lower with ``maximize=False``). An infeasible member's
            may be NaN or infinite (a simulation that diverged): it is not read.
        violation: ``(N,)``, or one number: how far each member breaks its constraints, ``> 0`` infeasible, ``<= 0``
            feasible, e.g. ``cost - budget`` or a sum of such terms clamped at 0. Finite: a member to rank below all
            others gets a large finite violation (``1e9``).
        worst: a number no feasible member's fitness is below (above with ``maximize=False``), e.g. the lowest
            return an episode can have; a feasible fitness past it is an error, as it would rank below infeasible
            members.
        maximize: ``False`` for a loss told to ``FlipES(..., maximize=False)``: infeasible members get
            ``worst + violation``.

    Returns:
        float64 ``(N,)``, finite (an infeasible member's strictly past ``worst``, and within float64's range, where
        ``worst - violation`` would round to ``worst`` or overflow); 0-d for one value each (the centre's, in an
        ``evaluate``). Its mean (the rows' ``fitness_mean``) mixes fitness and violations: log the members' own
        fitness and cost beside it (README: "Several objectives and constraints").
    """
    # one value each (the centre's, in an evaluate: best.pt and --target then judge feasible centres first): a 0-d result
    one = all(np.ndim(v) == 0 for v in (fitness, violation))
    if one:
        fitness, violation = (torch.as_tensor(v, dtype=torch.float64).reshape(1) for v in (fitness, violation))
    elif any(np.ndim(v) != 1 for v in (fitness, violation)):  # not the shaping functions' error: it named neither
        raise ValueError(
            f"feasible_first: fitness {tuple(np.shape(fitness))} and violation {tuple(np.shape(violation))} need one value "
            "each per member, (N,) both, or one number each (the centre's): flatten a column (N, 1), and give a "
            "violation shared by all members as torch.full_like(fitness, v)"
        )
    fitness, violation = _floating(fitness).double(), _floating(violation).double()
    if fitness.shape != violation.shape:
        raise ValueError(
            f"feasible_first: fitness {tuple(fitness.shape)} and violation {tuple(violation.shape)} need one value each "
            "per member, of one shape"
        )
    if not math.isfinite(worst):
        raise ValueError(f"feasible_first: worst must be a finite number, got {worst!r}")
    if not bool(violation.isfinite().all()):
        at = (~violation.isfinite()).nonzero().flatten()
        raise ValueError(
            f"feasible_first: the violation of {len(at)} member(s) is not finite (first: {at[0].item()}="
            f"{violation[at[0]].item()}); give a member to rank below all others a large finite violation (1e9)"
        )
    feasible = violation <= 0
    sign = 1.0 if maximize else -1.0
    past = feasible & ~(fitness.isfinite() & (sign * (fitness - worst) >= 0))  # below worst (above for a loss), or NaN/inf
    if bool(past.any()):
        at = past.nonzero().flatten()
        shown = ", ".join(f"{i}={fitness[i].item()}" for i in at[:5].tolist()) + (", ..." if len(at) > 5 else "")
        side = "below" if maximize else "above"
        raise ValueError(
            f"feasible_first: {len(at)} feasible member(s) have a fitness {side} worst={worst!r} or not finite ({shown}): "
            f"they would rank with the infeasible ones; pass a worst {side} every feasible fitness, and give a member "
            "that cannot be scored a violation > 0"
        )
    # strictly past worst (a violation under worst's rounding step tied a feasible member at worst) and finite (worst
    # minus a violation near float64's largest overflowed to -inf)
    edge, end = math.nextafter(float(worst), -sign * math.inf), -sign * torch.finfo(torch.float64).max
    penalized = (worst - sign * violation).clamp(*sorted((edge, end)))
    scores = torch.where(feasible, fitness, penalized)
    return scores[0] if one else scores
