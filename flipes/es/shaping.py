"""Fitness shaping: plain functions from raw fitness ``(N,)`` to the weights of the ES gradient.

Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
2017 (arXiv:1703.03864): centered ranks make the update invariant to monotone transforms of the
fitness and robust to outliers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def centered_ranks(fitness: Tensor) -> Tensor:
    """Ranks scaled to ``[-0.5, 0.5]``; tied fitness values share their mean rank (so a mirrored
    pair with equal fitness contributes nothing)."""
    n = fitness.numel()
    if n < 2:
        return torch.zeros_like(fitness)
    values, order = fitness.sort()
    _, run, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0) - (counts + 1) / 2  # runs of ties: (first + last) / 2
    ranks = torch.empty_like(fitness)
    ranks[order] = mean_rank[run].to(fitness.dtype)
    return ranks / (n - 1) - 0.5


def z_score(fitness: Tensor) -> Tensor:
    """``(f - mean) / std``; zeros when all values are equal."""
    std = fitness.std(unbiased=False)
    centered = fitness - fitness.mean()
    return centered / std if std > 0 else torch.zeros_like(fitness)


def raw(fitness: Tensor) -> Tensor:
    """No shaping: the plain Monte-Carlo estimator of ``∇ E[F(θ + σu)]``."""
    return fitness.clone()
