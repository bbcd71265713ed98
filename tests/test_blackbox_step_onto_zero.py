"""A step that lands the centre exactly on θ = 0 (a 1-D Vector whose first Adam step is its own value) has an
update_ratio ‖Δθ‖/‖θ‖ of inf with finite parameters: train goes on rather than stopping the run as "the update made
the parameters non-finite"; a genuinely non-finite update still stops it (tests/test_reliability.py)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

import flipes


def test_train_goes_on_after_a_step_that_lands_exactly_on_zero(tmp_path: Path) -> None:
    """From x = 0.5 with --lr 0.5, Adam's first step is exactly -0.5 (its |m̂|/(√v̂ + ε) rounds to 1 in float32) for
    seed 2, so θ becomes exactly 0: the row's update_ratio is inf, the parameters finite, and both generations run."""
    result = flipes.train(
        env="none",
        model=lambda env: flipes.nn.Vector(torch.tensor([0.5])),
        fitness=lambda model, pop: -(model() + 1).square().sum(1),
        popsize=4,
        lr=0.5,
        seed=2,
        generations=2,
        progress=False,
        tensorboard=False,
        plot=False,
        out=tmp_path / "run",
    )
    first = result.metrics[0]
    assert first["update_ratio"] == math.inf and first["grad_norm"] > 0  # the step onto 0 this test is about
    assert result.reason == "generations" and len(result.metrics) == 2
    assert math.isfinite(result.metrics[1]["update_ratio"])
