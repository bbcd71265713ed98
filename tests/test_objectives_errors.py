"""A fitness of several values per member (objectives, constraint costs, logged metrics), as EvoTorch's multi-objective
problems and ``eval_data`` return them: ``tell`` and ``flipes.train`` refuse it, naming what it is and how to make one
number per member of it, and change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import flipes

N = 8


def _values(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return v.sum(1), v.square().sum(1)  # a reward and a cost of each member


SEVERAL = {
    "table (N, k)": (lambda v: torch.stack(_values(v), 1), r"2 values per member \(shape \(8, 2\)"),
    "table (k, N)": (lambda v: torch.stack(_values(v), 0), r"2 values per member \(shape \(2, 8\)"),
    "tuple": (lambda v: _values(v), r"a tuple of 2 tensors of 8 values each"),
    "list": (lambda v: list(_values(v)), r"a list of 2 tensors of 8 values each"),
    "numpy tuple": (lambda v: tuple(x.numpy() for x in _values(v)), r"(a tuple of 2 tensors of 8 values each|\(2, 8\))"),
    "dict": (lambda v: dict(zip(("reward", "cost"), _values(v), strict=True)), r"a dict of 2 tensors .*'reward', 'cost'"),
}
RECIPE = r"one number per member.*f @ f.new_tensor.*reward - lam \* \(cost - budget\).*Several objectives and constraints"


def _vector() -> flipes.nn.Vector:
    return flipes.flipout(flipes.nn.Vector(torch.arange(4.0)))


@pytest.mark.parametrize("kind", list(SEVERAL))
def test_tell_names_several_values_per_member_and_the_scalarization(kind: str) -> None:
    """``tell`` given several values per member says so (not ``torch.cat``, which is for the parts of a population, and
    would make 2N values) and names a weighted sum, a penalty and the README section; the generation stays."""
    make, what = SEVERAL[kind]
    x = _vector()
    es = flipes.FlipES(x, popsize=N, sigma=0.1, seed=0)
    with es.population():
        v = x()
        fitness, table = make(v), torch.stack(_values(v), 1)
    with pytest.raises((TypeError, ValueError), match=what + ".*" + RECIPE) as e:
        es.tell(fitness)
    assert "torch.cat" not in str(e.value)
    assert es.generation == 0
    es.tell(table @ table.new_tensor([1.0, -0.1]))  # the recipe is taken
    assert es.generation == 1


def test_a_column_is_told_to_flatten() -> None:
    """A fitness of shape (N, 1) (a model's last layer of one output) is told to flatten, not to scalarize."""
    x = _vector()
    es = flipes.FlipES(x, popsize=N, sigma=0.1, seed=0)
    with es.population():
        fitness = x().sum(1, keepdim=True)
    column = r"a Tensor of shape \(8,\); this is a column \(N, 1\): flatten it with fitness.flatten\(\)$"
    with pytest.raises(ValueError, match=column):
        es.tell(fitness)


@pytest.mark.parametrize("kind", ["table (N, k)", "tuple", "dict"])
def test_train_names_several_values_per_member_and_the_scalarization(kind: str, tmp_path: Path) -> None:
    """``flipes.train`` given a fitness that returns several values per member refuses it naming the function, what it
    returned and the scalarization, where it said only "shape (2, 8)" or "dict" before."""
    make, what = SEVERAL[kind]

    def fitness(model: torch.nn.Module, pop: Any) -> Any:
        return make(model())

    with pytest.raises(flipes.UsageError, match=r"fitness returned " + what + ".*" + RECIPE):
        flipes.train(env="none", model=lambda env: flipes.nn.Vector(torch.zeros(4)), fitness=fitness, popsize=N,
                     generations=1, out=str(tmp_path / "run"), progress=False, plot=False, tensorboard=False)  # fmt: skip


def test_parts_of_a_population_are_still_told_to_catenate() -> None:
    """Tensors whose lengths add up to the members (the parts of a population) are still told ``torch.cat``: the
    objectives' message is for tensors of N values each."""
    x = _vector()
    es = flipes.FlipES(x, popsize=N, sigma=0.1, seed=0)
    with es.population():
        f = x().sum(1)
    with pytest.raises(TypeError, match=r"torch.cat\(fitness\)$"):
        es.tell([f[:3], f[3:]])
