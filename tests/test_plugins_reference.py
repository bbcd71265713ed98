"""Plug-ins of one's own that reimplement a built-in step exactly as the built-in one, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import torch

import flipes
from flipes.checkpoint import tensors_sha256


def fitness(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
    return -(model(torch.ones(pop.size, 4)) - 1).pow(2).sum(1)


def hashes(**kw: object) -> list[str]:
    torch.manual_seed(0)
    es = flipes.FlipES(flipes.flipout(torch.nn.Linear(4, 3)), popsize=16, sigma=0.1, seed=0, **kw)
    out = []
    for _ in range(5):
        es.step(fitness)
        out.append(tensors_sha256(es.params))
    return out


def test_the_default_optimizer_is_torchs_fused_adam_at_lr() -> None:
    """FlipES's default optimizer steps bit for bit as ``torch.optim.Adam(params, lr=lr, fused=True)`` plugged in, over
    5 generations (the README's recipe for reproducing it)."""
    fused: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] = lambda p: torch.optim.Adam(p, lr=0.05, fused=True)  # noqa: E731
    assert hashes(lr=0.05) == hashes(optimizer=fused)


def test_a_centered_rank_shaping_of_ones_own_steps_as_the_built_in() -> None:
    """OpenAI's starter's centered ranks (an argsort's ranks / (N - 1) - 0.5), plugged as ``shaping=``, give the
    built-in ``centered_ranks``'s parameters bit for bit for distinct fitness values."""

    def ranks(f: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(f)
        r[f.argsort()] = torch.arange(len(f), dtype=f.dtype)
        return r / (len(f) - 1) - 0.5

    assert hashes(shaping=ranks) == hashes(shaping=flipes.shaping.centered_ranks)
