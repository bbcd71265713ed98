"""A fitness that overflows because adaptive σ has grown without limit (a fitness rewarding spread) is reported as σ's
growth, naming its value and the fix, not as a fitness function that should clip its values."""

from __future__ import annotations

import math

import pytest
import torch

import flipes
from flipes.nn import Vector


def _tell_overflowing(log_sigma: float | None) -> str:
    x = flipes.flipout(Vector(torch.ones(4)))
    es = flipes.FlipES(x, popsize=8, sigma=0.1, sigma_lr=0.5, seed=0)
    if log_sigma is not None:
        es.log_sigma.fill_(log_sigma)
    with es.population():
        fitness = x().square().sum(-1) * (1e38 if log_sigma is None else 1.0)  # float32 overflows either way
    with pytest.raises(ValueError) as e:
        es.tell(fitness)
    return str(e.value)


def test_an_overflow_after_sigma_grew_names_sigma() -> None:
    """σ grown to 1e25 (from 0.1): the error names the grown σ, sigma_lr and the fix."""
    message = _tell_overflowing(math.log(1e25))
    assert "adaptive σ has grown to 1e+25 from 0.1 (sigma_lr=0.5)" in message, message
    assert "bound the fitness or lower sigma_lr" in message


def test_an_overflow_at_the_starting_sigma_asks_the_fitness_to_clip() -> None:
    """With σ where it started, the overflow is the fitness function's: the usual line asking it to clip."""
    message = _tell_overflowing(None)
    assert "clip or penalize instead of returning nan/inf" in message and "adaptive σ" not in message, message
