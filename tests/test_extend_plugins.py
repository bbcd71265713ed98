"""Plug-ins of one's own (``--fitness``, ``--shaping``, ``evaluate``): mistakes are one line naming the fix."""

from __future__ import annotations

import pytest
import torch

import flipes
from flipes.errors import UsageError


class Ranks:
    """A stateful shaping written as a class: an instance is the plug-in, the class is not."""

    def __call__(self, fitness):
        return fitness.argsort().argsort().double() / (len(fitness) - 1) - 0.5


class Fit:
    def __init__(self, model, pop) -> None:  # takes fitness's arguments, so its signature alone passes
        self.model = model


@pytest.mark.parametrize(
    ("option", "overrides", "fix"),
    [
        ("--shaping", {"env": "flipes/CartPole-v1", "shaping": Ranks}, "ranks = Ranks() in test_extend_plugins"),
        ("--fitness", {"env": "none", "fitness": Fit, "model": lambda env: flipes.nn.Vector(torch.zeros(2))}, "fit = Fit()"),
    ],
)
def test_a_class_given_where_a_function_is_called_is_refused_naming_an_instance(tmp_path, option, overrides, fix) -> None:
    """A class given as --shaping or --fitness, which flipes would call and so instantiate (a no-argument __init__ failed
    as "takes other arguments", one taking fitness's arguments as "returned Fit"), is refused before training as a class,
    naming an instance of it as the fix."""
    with pytest.raises(UsageError, match=f"^{option}: test_extend_plugins:{overrides[option[2:]].__name__} is a class") as e:
        flipes.train(**overrides, popsize=4, generations=1, out=str(tmp_path / "r"), plot=False, progress=False)
    assert fix in str(e.value), e.value
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
