"""``flipes.shaping.feasible_first``: a fitness that ranks as Deb's feasibility rules, from each member's values alone,
and the non-finite fitness errors naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import flipes
from flipes.shaping import centered_ranks, feasible_first


def _deb_order(fitness: list[float], violation: list[float]) -> list[int]:
    """Members from worst to best by Deb's rules, written out: infeasible ones by decreasing violation, then feasible
    ones by increasing fitness."""
    key = [(0, -v, 0.0) if v > 0 else (1, 0.0, f) for f, v in zip(fitness, violation, strict=True)]
    return sorted(range(len(key)), key=key.__getitem__)


def test_ranks_are_deb_feasibility_rules() -> None:
    """Centered ranks of ``feasible_first`` order 64 members exactly as Deb's rules sort them (distinct values, seed 0),
    infeasible members' NaN and infinite fitness included (not read)."""
    g = torch.Generator().manual_seed(0)
    fitness = torch.randn(64, generator=g, dtype=torch.float64) * 10
    violation = torch.randn(64, generator=g, dtype=torch.float64)  # about half infeasible
    fitness[violation > 1] = torch.nan
    fitness[violation > 1.5] = -torch.inf
    score = feasible_first(fitness, violation, worst=fitness[violation <= 0].min().item())
    order = _deb_order(fitness.tolist(), violation.tolist())
    expected = torch.empty(64, dtype=torch.float64)
    expected[order] = torch.arange(64, dtype=torch.float64) / 63 - 0.5
    assert torch.equal(centered_ranks(score), expected)
    assert bool(score.isfinite().all())


def test_a_loss_ranks_the_same_members_first() -> None:
    """With ``maximize=False`` (a loss), the values are the negation of ``feasible_first`` of the negated loss and
    worst: the same ranking for ``FlipES(..., maximize=False)``."""
    loss, violation = torch.tensor([3.0, 1.0, 2.0, 9.0]), torch.tensor([0.0, 2.0, -1.0, 0.5])
    assert torch.equal(feasible_first(loss, violation, 5.0, maximize=False), -feasible_first(-loss, violation, -5.0))
    assert feasible_first(loss, violation, 5.0, maximize=False).tolist() == [3.0, 7.0, 2.0, 5.5]


@pytest.mark.parametrize(
    "fitness,violation,worst,message",
    [
        ([1.0, -1.0], [0.0, 0.0], 0.0, r"1 feasible member\(s\) have a fitness below worst=0.0 .*\(1=-1.0\)"),
        ([torch.nan, 1.0], [0.0, 0.0], 0.0, r"below worst=0.0 or not finite \(0=nan\).*violation > 0"),
        ([1.0, 1.0], [0.0, torch.inf], 0.0, r"violation of 1 member\(s\) is not finite \(first: 1=inf\).*1e9"),
        ([1.0, 1.0], [0.0], 0.0, r"fitness \(2,\) and violation \(1,\)"),
        ([1.0, 1.0], [0.0, 0.0], torch.inf, r"worst must be a finite number"),
    ],
)
def test_what_would_rank_wrongly_is_refused(fitness: list, violation: list, worst: float, message: str) -> None:
    """A feasible member past ``worst`` (it would rank among infeasible ones), a NaN where a member counts as feasible, a
    non-finite violation, shapes that differ, or an infinite worst: each a ValueError naming it."""
    with pytest.raises(ValueError, match=message):
        feasible_first(torch.tensor(fitness), torch.tensor(violation), worst)


def test_an_infeasible_twin_pushes_the_step_toward_its_feasible_twin() -> None:
    """A mirrored pair whose second twin is infeasible (its fitness NaN) steps the center along the first twin's
    perturbation: SGD's step is exactly ``lr · 0.5 · σu₀ / σ²`` of centered ranks ±0.5 over 2 members (float64)."""
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(5, dtype=torch.float64)))
    es = flipes.FlipES(x, popsize=2, sigma=0.1, seed=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    with es.population():
        v = x()
        fitness = torch.stack((v[0].sum(), torch.tensor(torch.nan, dtype=torch.float64)))
    u0 = es.member_noise(0)["value"]
    es.tell(feasible_first(fitness, torch.tensor([0.0, 1.0]), worst=-100.0))
    # ĝ = Σ w_n σu_n / (N σ²) with w = (0.5, -0.5) and u_1 = -u_0: 0.5 σu_0 / σ²
    torch.testing.assert_close(x.value.detach(), 0.01 * 0.5 * u0 / 0.1**2, rtol=1e-12, atol=0)


def test_tell_and_train_name_feasible_first_for_a_non_finite_fitness(tmp_path: Path) -> None:
    """A NaN or infinite fitness is still refused (by ``tell`` and by ``flipes.train``), and the error names
    ``feasible_first`` as the way to rank such members last."""
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(3)))
    es = flipes.FlipES(x, popsize=4, sigma=0.1, seed=0)
    with es.population():
        f = x().sum(1)
    with pytest.raises(flipes.es.checks.NonFiniteFitness, match=r"\(1=-inf\).*flipes.shaping.feasible_first\(fitness"):
        es.tell(torch.where(torch.arange(4) == 1, -torch.inf, f))

    def fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
        return torch.where(torch.arange(pop.size) == 2, torch.nan, model().sum(1))

    with pytest.raises(flipes.UsageError, match=r"member 2: nan.*flipes.shaping.feasible_first\(fitness, violation, worst"):
        flipes.train(env="none", model=lambda env: flipes.nn.Vector(torch.zeros(3)), fitness=fitness, popsize=4,
                     generations=1, out=str(tmp_path / "run"), progress=False, plot=False, tensorboard=False)  # fmt: skip


def test_one_value_each_gives_a_0d_score_as_the_vector_form() -> None:
    """Numbers (the centre's reward and violation, in an ``evaluate``) give a 0-d float64 tensor, the value the
    vector form gives that member; its checks apply alike."""
    assert feasible_first(3.0, 0.0, -1.0).shape == () and feasible_first(3.0, 0.0, -1.0).dtype == torch.float64
    for fitness, violation in [(3.0, 0.0), (float("nan"), 2.5), (-0.5, -1.0)]:
        vector = feasible_first(torch.tensor([fitness]), torch.tensor([violation]), -1.0)
        assert torch.equal(feasible_first(fitness, violation, -1.0).reshape(1), vector)
    with pytest.raises(ValueError, match=r"below worst=-1.0"):
        feasible_first(-3.0, 0.0, -1.0)


def test_an_evaluate_of_feasible_first_makes_the_best_centre_a_feasible_one(tmp_path: Path) -> None:
    """A run whose centre walks from x = 0 toward the fitness's optimum x = 1 crosses a budget ‖x‖₁ <= 1.5 midway; its
    ``evaluate`` returning ``float(feasible_first(reward, cost - 1.5, worst))`` as ``eval_return`` makes ``result.best``
    the reward of the last feasible centre, where the plain reward's best is an infeasible later one."""

    def fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
        return -(model() - 1).square().sum(1)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        v = model()
        reward, cost = -(v - 1).square().sum().item(), v.abs().sum().item()
        return {"eval_return": float(feasible_first(reward, cost - 1.5, worst=-100.0)), "reward": reward, "cost": cost}

    result = flipes.train(env="none", model=lambda env: flipes.nn.Vector(torch.zeros(3)), fitness=fitness,
                          evaluate=evaluate, eval_every=1, popsize=8, sigma=0.1, lr=0.05, generations=30, seed=0,
                          out=str(tmp_path / "run"), progress=False, plot=False, tensorboard=False)  # fmt: skip
    rows = result.metrics
    feasible = [row for row in rows if row["cost"] <= 1.5]
    assert feasible and len(feasible) < len(rows)  # the centre crossed the budget
    assert max(row["reward"] for row in rows) > max(row["reward"] for row in feasible)
    assert result.best == max(row["reward"] for row in feasible)


@pytest.mark.parametrize("shaping", [centered_ranks, flipes.shaping.z_score, flipes.shaping.ars])
def test_shaping_functions_name_feasible_first_for_a_nan(shaping: Any) -> None:
    """flipes' shaping functions called on a NaN fitness (in a loop of one's own combining scores) name the members and
    ``feasible_first`` as the way to rank infeasible ones last."""
    with pytest.raises(ValueError, match=r"\(1=nan\).*flipes.shaping.feasible_first\(fitness, violation, worst\)"):
        shaping(torch.tensor([1.0, torch.nan, 2.0, 0.0]))
