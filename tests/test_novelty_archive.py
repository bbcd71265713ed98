"""Behaviours for novelty search (NS-ES, Conti et al. 2018) from a rollout's probe, and an archive of them kept across
generations: a probe's NaN rows are refused where they arise, and an archive held in a callback's ``state_dict()``
continues a resumed ``flipes.train`` run as if it had never stopped."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import flipes
from flipes.rl import Probe, RolloutFitness, make_vector_env, run_episodes

ENV = "flipes/CartPole-v1"


class MeanSpeed(Probe):
    """Each episode's mean cart speed over its counted steps, divided by the steps without a floor: NaN for an episode
    of no steps (``max_steps=0``), the slip a NaN check should name."""

    def reset(self, env: Any, obs: Tensor) -> None:
        self.sum, self.steps = torch.zeros(len(obs), dtype=obs.dtype), torch.zeros(len(obs), dtype=obs.dtype)

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        self.sum += obs[:, 1] * counted
        self.steps += counted

    def result(self) -> Tensor:
        return self.sum / self.steps


class SomeNaN(MeanSpeed):
    """MeanSpeed with rows 1 and 3 made NaN, as a behaviour computed wrongly for some envs."""

    def result(self) -> Tensor:
        out = super().result().clone()
        out[[1, 3]] = float("nan")
        return out


def test_a_probe_result_holding_nan_is_refused_in_one_line_naming_the_probe_and_its_rows() -> None:
    """A NaN behaviour would rank arbitrarily in a novelty score, or sit in an archive where every distance to it is NaN:
    ``run_episodes`` and ``RolloutFitness`` refuse a probe result holding NaN with a one-line ValueError naming the
    probe, the rows and the fix; an infinite entry and integer results pass."""
    env = make_vector_env(ENV, 4, note=None)
    act = lambda o: torch.zeros(len(o), dtype=torch.long)  # noqa: E731
    with pytest.raises(ValueError, match=r"^SomeNaN\.result\(\) returned NaN in 2 of 4 rows \(1, 3\).*finite") as e:
        run_episodes(env, act, seed=0, max_steps=5, probe=SomeNaN())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"MeanSpeed\.result\(\) returned NaN in 4 of 4 rows \(0, 1, 2, 3\)"):
        run_episodes(env, act, seed=0, max_steps=0, probe=MeanSpeed())  # episodes of no steps: 0 / 0

    class Inf(MeanSpeed):
        def result(self) -> Tensor:
            return torch.full((len(self.sum),), float("inf"))

    class Steps(MeanSpeed):
        def result(self) -> Tensor:
            return self.steps.long()

    assert torch.isinf(run_episodes(env, act, seed=0, max_steps=5, probe=Inf()).probe).all()
    assert run_episodes(env, act, seed=0, max_steps=5, probe=Steps()).probe.tolist() == [5] * 4
    policy = flipes.flipout(flipes.rl.MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[4]))
    es = flipes.FlipES(policy, popsize=4, sigma=0.1, seed=0)
    with es.population() as pop, pytest.raises(ValueError, match=r"SomeNaN\.result\(\) returned NaN in 2 of 4 rows"):
        RolloutFitness(env, max_steps=5, probe=SomeNaN())(policy, pop)
