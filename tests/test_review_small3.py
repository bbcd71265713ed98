"""What the review by mutation of the pipelined first-step check and of update_ratio at θ = 0 found unguarded: a pipelined
rollout checks each half's first rewards against that half's own actions, at its first step only, as the serial one; a
non-zero step that lands on θ = 0 is reported as an update_ratio of inf."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import flipes
from flipes.rl.envs import NonFiniteRewards
from flipes.rl.rollout import run_episodes


class HalfNan(gym.vector.VectorEnv):
    """Four envs stepped by send/recv (as EnvPool's) in a bounded Box; env i pays 1 a step, nan at its step
    ``nan_at[i]`` (1: the first), and every episode ends after 3 steps."""

    def __init__(self, nan_at: list[int]) -> None:
        self.num_envs, self.nan_at = 4, np.array(nan_at)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = np.zeros(4, dtype=np.int64)

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        self.t[:] = 0
        return torch.zeros(4, 1), {}  # tensors: a torch env, not wrapped (as EnvPoolVectorEnv)

    def send(self, actions: np.ndarray, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids)

    def recv(self) -> tuple[np.ndarray, ...]:
        ids = self.ids
        self.t[ids] += 1
        reward = np.where(self.t[ids] == self.nan_at[ids], np.nan, 1.0)
        ended = self.t[ids] >= 3
        return ids, np.zeros((len(ids), 1), np.float32), reward, ended, np.zeros_like(ended)

    def step(self, actions):  # type: ignore[override]
        self.send(actions.numpy(), np.arange(4))
        _, obs, reward, terminated, truncated = (torch.as_tensor(x) for x in self.recv())
        return obs, reward, terminated, truncated, {}


def _policy(nan_rows: list[int]):
    def act(obs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(obs.shape[0], 1)
        out[nan_rows] = float("nan")
        return out

    return act


def test_a_pipelined_half_judges_its_first_rewards_by_its_own_actions() -> None:
    """The policy's actions are nan for envs 2 and 3 (the second half) and finite for 0 and 1. Pipelined, a nan first
    reward of env 0 (its half's actions finite) is the env's: NonFiniteRewards naming HalfNan; one of env 2 (its half's
    actions nan) is the policy's: the rollout returns a nan return for env 2 alone. (The serial rollout reads all
    actions at once and leaves both to the returns.)"""
    with pytest.raises(NonFiniteRewards, match=r"HalfNan\.step\(\) returned 1 nan or inf reward\(s\) of 2 at the first"):
        run_episodes(HalfNan([1, 0, 0, 0]), _policy([2, 3]), seed=0, pipeline=True)
    ep = run_episodes(HalfNan([0, 0, 1, 0]), _policy([2, 3]), seed=0, pipeline=True)
    assert ep.returns.isnan().tolist() == [False, False, True, False] and ep.returns[[0, 1, 3]].tolist() == [3.0] * 3


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_nan_reward_after_the_first_step_is_left_to_the_returns(pipeline: bool) -> None:
    """A nan reward at the second step, for finite actions, is not refused as the env's first-step fault (the check
    reads the states the reset drew only): env 1's return is nan, the others 3, plain and pipelined alike."""
    ep = run_episodes(HalfNan([0, 2, 0, 0]), _policy([]), seed=0, pipeline=pipeline)
    assert ep.returns.isnan().tolist() == [False, True, False, False] and ep.returns[[0, 2, 3]].tolist() == [3.0] * 3


class ToZero(torch.optim.Optimizer):
    """An optimizer whose step sets every parameter to 0."""

    def __init__(self, params, lr: float = 1.0) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        for group in self.param_groups:
            for p in group["params"]:
                p.zero_()


def test_a_nonzero_step_onto_zero_parameters_has_an_infinite_update_ratio() -> None:
    """A step of ‖Δθ‖ = √3 from θ = (1, 1, 1) to θ = 0 is reported as update_ratio inf (‖Δθ‖/‖θ‖ after the step), not 0,
    which reads as no step at all."""
    x = flipes.flipout(flipes.nn.Vector(torch.ones(3)))
    es = flipes.FlipES(x, popsize=4, sigma=0.1, seed=0, optimizer=ToZero)
    with es.population():
        loss = x().sum(1)
    stats = es.tell(loss)
    assert torch.equal(x.value, torch.zeros(3)) and stats["update_ratio"] == float("inf")


def test_train_goes_on_after_a_step_onto_zero_parameters(tmp_path: Path) -> None:
    """train does not stop a run whose step lands on θ = 0 (update_ratio inf, every parameter finite) as "the update
    made the parameters non-finite": both generations run, the first logs its ratio as inf, the parameters end at 0."""
    result = flipes.train(
        env="none",
        fitness=lambda model, pop: -(model() - 1).square().sum(1),
        model=lambda env: flipes.nn.Vector(torch.ones(3)),
        optimizer=ToZero,
        popsize=4,
        generations=2,
        progress=False,
        plot=False,
        out=tmp_path / "run",
    )
    assert [row["update_ratio"] for row in result.metrics] == [float("inf"), 0.0]
    assert torch.equal(result.model.value, torch.zeros(3))
