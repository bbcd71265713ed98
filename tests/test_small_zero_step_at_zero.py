"""A step of exactly zero from parameters that are all zero (a symmetric fitness at a start of zeros gives a zero ES
gradient: mirrored pairs cancel) is reported as an update_ratio of 0, and train goes on, rather than inf, which train
reads as parameters made non-finite."""

from __future__ import annotations

from pathlib import Path

import torch

import flipes


def _zero_step_run() -> tuple[flipes.FlipES, torch.nn.Module]:
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(3)))
    return flipes.FlipES(x, popsize=4, sigma=0.1, lr=0.05, seed=0, maximize=False), x


def test_no_step_at_zero_parameters_has_an_update_ratio_of_zero() -> None:
    """‖Δθ‖/‖θ‖ at θ = 0 with Δθ = 0 is 0: the parameters stay finite and unchanged."""
    es, x = _zero_step_run()
    with es.population():
        loss = x().square().sum(1)
    stats = es.tell(loss)
    assert stats["grad_norm"] == 0.0 and stats["update_ratio"] == 0.0
    assert torch.equal(x.value, torch.zeros(3))


def test_train_from_zeros_on_a_symmetric_fitness_runs_its_generations(tmp_path: Path) -> None:
    """train does not stop a run whose gradient is zero at a start of zeros as "parameters made non-finite"."""
    result = flipes.train(
        env="none",
        fitness=lambda model, pop: -model().square().sum(1),
        model=lambda env: flipes.nn.Vector(torch.zeros(3)),
        popsize=4,
        generations=2,
        progress=False,
        out=tmp_path / "run",
    )
    assert len(result.metrics) == 2 and all(row["update_ratio"] == 0.0 for row in result.metrics)
