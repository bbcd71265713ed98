"""``es.load_state_dict`` of a state whose optimizer has other param groups than this FlipES's (a factory of two groups
saved, one built now) is refused before anything is loaded: torch's optimizer load raises only after the model was
loaded, which left the model holding the state's parameters at generation 0 with a fresh optimizer."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import flipes


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return flipes.flipout(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2), nn.Tanh(), nn.Linear(2, 2)))


def two_groups(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], lr=0.01)


def test_a_state_of_other_optimizer_groups_is_refused_with_the_model_and_generation_untouched() -> None:
    """A ValueError naming both group layouts, and the FlipES's model parameters, generation and optimizer state exactly
    as before the call."""
    saved_model = mlp()
    saved = flipes.FlipES(saved_model, popsize=8, sigma=0.1, seed=0, optimizer=two_groups)
    x = torch.randn(8, 5)
    for _ in range(2):
        with saved.population():
            fitness = saved_model(x).sum(-1)
        saved.tell(fitness)
    model = mlp()
    es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=re.escape("parameter groups of [2, 4] parameters, this FlipES's optimizer [6]")):
        es.load_state_dict(saved.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert es.generation == 0 and not es.optimizer.state
