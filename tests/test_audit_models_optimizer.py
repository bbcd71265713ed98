"""Optimizer flags that ``tell``'s step cannot honour are refused when the FlipES (or ``es.optimizer = ...``) is built:
``maximize=True`` would climb ``.grad = -ĝ``, downhill in fitness, and ``differentiable=True`` fails inside torch at the
first step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flipes


def model() -> nn.Module:
    torch.manual_seed(0)
    return flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))


@pytest.mark.parametrize("flag", ["maximize", "differentiable"])
def test_an_optimizer_built_with_maximize_or_differentiable_is_refused_naming_the_flag(flag: str) -> None:
    """Given as a factory and assigned as ``es.optimizer``, each is a ValueError naming the flag, before any step."""
    with pytest.raises(ValueError, match=rf"Adam\({flag}=True\)"):
        flipes.FlipES(model(), popsize=8, sigma=0.1, optimizer=lambda p: torch.optim.Adam(p, lr=0.01, **{flag: True}))
    es = flipes.FlipES(model(), popsize=8, sigma=0.1)
    with pytest.raises(ValueError, match=rf"Adam\({flag}=True\)"):
        es.optimizer = torch.optim.Adam(es.params, lr=0.01, **{flag: True})


def test_the_default_adam_climbs_the_fitness_its_maximize_flag_would_descend() -> None:
    """The property the refusal keeps: with ``.grad = -ĝ`` a minimizing Adam raises the fitness ``-‖model(x) - 3‖²`` over 30
    generations (fixed seed), so the same Adam with ``maximize=True`` would lower it."""
    net = model()
    x = torch.randn(16, 3)
    es = flipes.FlipES(net, popsize=16, sigma=0.1, seed=0, optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    first = last = None
    for _ in range(30):
        with es.population():
            fitness = -(net(x) - 3).square().sum(-1)
        stats = es.tell(fitness)
        first = stats["fitness_mean"] if first is None else first
        last = stats["fitness_mean"]
    assert last > first
