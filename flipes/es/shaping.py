"""Fitness shaping: plain functions from raw fitness ``(N,)`` to the weights of the ES gradient.

Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
2017 (arXiv:1703.03864): centered ranks make the update invariant to monotone transforms of the
fitness and robust to outliers.

Each takes the fitness as a Tensor, a numpy array or a list of numbers, and returns a Tensor: so they compose in a
shaping of one's own (NSR-ES's mean of the reward's and the novelty's ranks,
``lambda f: (centered_ranks(reward) + centered_ranks(novelty)) / 2``).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor


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


def centered_ranks(fitness: Tensor | ArrayLike) -> Tensor:
    """Ranks scaled to ``[-0.5, 0.5]``; tied fitness values share their mean rank (so a mirrored
    pair with equal fitness contributes nothing)."""
    fitness = _floating(fitness)
    n = fitness.numel()
    if n < 2:
        return torch.zeros_like(fitness)
    values, order = fitness.sort()
    _, run, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    # runs of ties: (first + last) / 2, in float32 at least: half-integers are exact there up to 2²³, where a half default
    # dtype would round them (float16 from 2¹⁰)
    exact = torch.promote_types(torch.get_default_dtype(), torch.float32)
    mean_rank = counts.cumsum(0).to(exact) - (counts + 1).to(exact) / 2
    ranks = torch.empty_like(fitness)
    ranks[order] = mean_rank[run].to(fitness.dtype)
    return ranks / (n - 1) - 0.5


def z_score(fitness: Tensor | ArrayLike) -> Tensor:
    """``(f - mean) / std``; zeros when all values are equal."""
    fitness = _floating(fitness)
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
    ``FlipES(..., shaping=functools.partial(ars, top=b))``.
    """
    fitness = _floating(fitness)
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
