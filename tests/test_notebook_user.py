"""What a notebook user of the low-level API meets: fitness in the forms ``tell``'s signature names, and an optimizer
built by hand and assigned, whose refusal names the assignment that fixes it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import flipes


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return flipes.flipout(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double())


def evaluated(options: dict | None = None) -> tuple[nn.Module, flipes.FlipES, torch.Tensor]:
    model = mlp()
    es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=1, **(options or {}))
    with es.population() as pop:
        fitness = model(torch.ones(pop.size, 3, dtype=torch.float64)).sum(-1)
    return model, es, fitness


def test_fitness_from_a_generator_steps_as_the_same_values_in_a_tensor() -> None:
    """``tell`` takes ``Iterable[float]``: a generator or ``map`` of the members' values gives the same stats and the same
    parameters, bit for bit, as the tensor of those values."""
    reference, es, fitness = evaluated()
    expected = es.tell(fitness)
    for make in (lambda f: (float(v) for v in f), lambda f: map(float, f.tolist())):
        model, es, fitness = evaluated()
        assert es.tell(make(fitness)) == expected
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.equal(p, q)


@pytest.mark.parametrize("form", [list, tuple, lambda f: (v for v in f)])
def test_fitness_as_python_floats_is_read_in_float64(form) -> None:
    """Returns near 1e6 that differ in the 4th decimal, told as Python floats, give the stats and the step of the float64
    tensor of those values bit for bit: they are not rounded to float32 first (whose spacing there, 0.0625, would tie
    every member and leave a zero gradient)."""
    results = []
    for as_list in (False, True):
        model, es, fitness = evaluated()
        values = fitness * 1e-3 + 1e6
        stats = es.tell(form(values.tolist()) if as_list else values)
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (expected, center), (stats, told) = results
    assert stats == expected and expected["fitness_std"] > 1e-4 and expected["grad_norm"] > 0
    assert all(torch.equal(p, q) for p, q in zip(told, center, strict=True))


def test_a_generator_of_the_wrong_length_is_refused_naming_the_shape() -> None:
    """A generator is read like a list: one value short is the shape error, and the FlipES takes the right fitness
    afterwards."""
    _, es, fitness = evaluated()
    with pytest.raises(ValueError, match=r"fitness has shape \(7,\), but this process evaluates 8 members"):
        es.tell(float(v) for v in fitness[:7])
    assert es.tell(fitness)["generation"] == 0


@pytest.mark.parametrize(
    ("frozen", "build", "problem"),
    [
        (False, lambda es, model: torch.optim.SGD(es.params[:1], lr=0.1), r"it leaves out 3: 0\.bias, 2\.weight, 2\.bias"),
        (
            False,
            lambda es, model: torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1),
            r"it leaves out 4: .*; it adds 4: a parameter of",
        ),
        (True, lambda es, model: torch.optim.Adam(model.parameters(), lr=0.1), r"it adds 2: 0\.weight, 0\.bias"),
    ],
)
def test_an_assigned_optimizer_over_other_parameters_names_the_assignment_that_fixes_it(frozen, build, problem) -> None:
    """``es.optimizer = SGD(...)`` over other parameters than ``es.params`` (part of them, a copy's, the model's frozen
    ones) is refused in one line naming them and the fix as an assignment over ``es.params`` with the same class (not a
    factory, which only ``FlipES(optimizer=...)`` takes); the optimizer in use stays."""
    model = mlp()
    model[0].requires_grad_(not frozen)
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    before = es.optimizer
    built = build(es, model)
    fix = rf"build it over them: es\.optimizer = torch\.optim\.{type(built).__name__}\(es\.params, \.\.\.\)$"
    with pytest.raises(ValueError, match=rf"^es\.optimizer = {type(built).__name__}\(\.\.\.\): the optimizer must hold "
                       rf"exactly the parameters FlipES evolves \(es\.params\): {problem}.*; {fix}") as error:  # fmt: skip
        es.optimizer = built
    assert "lambda" not in str(error.value) and "\n" not in str(error.value)
    assert es.optimizer is before
