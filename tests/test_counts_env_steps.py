"""The rows' ``timesteps`` and ``eval_steps`` against an env that counts its own steps: each generation's training
timesteps are exactly the steps its copies took inside the population's episodes (every member, every episode, up to
its termination or truncation), over resumes and over ranks; the steps a copy takes after its episode ended, while
the batch steps on until the longest one is over (gymnasium's autoreset into a next episode), are not counted, as
EvoTorch's VecGymNE (active envs only) and OpenAI's ES starter (the episodes' lengths) count; the center's
evaluation episodes are counted in ``eval_steps`` alone."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from helpers import metrics, run_thread_ranks

import flipes
import flipes.training
from flipes.rl import POLICIES, episode_seed

ENV_ID = "flipes_tests/CountingPole-v0"
LIMIT = 12  # truncation: episodes of unequal lengths (CartPole's random play falls within 8-30 steps), a few cut


class CountingPole(CartPoleEnv):
    """CartPole that books every step it takes under the seed of the episode it belongs to: an episode begins at a
    seeded reset and ends at its termination or truncation; steps after that, or in an episode begun by an unseeded
    (auto)reset, are booked under ``None``."""

    steps: ClassVar[Counter] = Counter()  # all copies together

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed_of_episode: int | None = None
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        self.seed_of_episode, self.t = seed, 0
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        CountingPole.steps[self.seed_of_episode] += 1
        out = super().step(action)
        self.t += 1
        if out[2] or self.t >= LIMIT:  # terminated, or the TimeLimit wrapper truncates it now
            self.seed_of_episode = None
        return out


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=CountingPole, max_episode_steps=LIMIT)

BASE = {"env": ENV_ID, "popsize": 8, "eval_every": 1, "eval_episodes": 3, "target": None, "seed": 5,
        "tensorboard": False, "plot": False, "progress": False}  # fmt: skip


def booked(seed: int, generation: int, stream: str, envs: int) -> int:
    """The steps booked under the seeds of ``envs`` global envs of one ``stream``'s batch of ``generation``."""
    base = episode_seed(seed, generation, stream)
    return sum(CountingPole.steps[base + g] for g in range(envs))


def own_weights(env: Any) -> torch.nn.Module:
    """flipes' MLP policy with weights drawn from a generator of its own: threads playing ranks share the global
    generators that a build from --seed draws from, and could build other weights."""
    policy = POLICIES["mlp"](env.single_observation_space, env.single_action_space, hidden=[8])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    return policy


def per_generation(rows: list[dict]) -> list[int]:
    return [r["timesteps"] - before for before, r in zip([0] + [r["timesteps"] for r in rows[:-1]], rows, strict=True)]


@pytest.mark.parametrize(
    "options",
    [{"episodes": 2}, {"episodes": 2, "common_episodes": True}, {"policy": "gru"}, {"members_per_pass": 2, "episodes": 2}],
    ids=["episodes", "common-episodes", "recurrent", "members-per-pass"],
)
def test_timesteps_are_the_steps_of_the_training_episodes_alone(tmp_path: Path, options: dict) -> None:
    """Every row's timesteps grow by exactly the steps the env took in that generation's population episodes (popsize
    × episodes seeded resets), and its eval_steps are exactly the steps of its evaluation episodes; the steps taken after
    an episode ended, which the batch did take (checked: some), count in neither."""
    CountingPole.steps.clear()
    rows = flipes.train(out=str(tmp_path / "run"), generations=3, **BASE, **options).metrics
    k = options.get("episodes", 1)
    envs = k if options.get("common_episodes") else BASE["popsize"] * k  # common episodes: every member plays env k's
    assert per_generation(rows) == [booked(BASE["seed"], g, "population", envs) for g in range(3)]
    assert [r["eval_steps"] for r in rows] == [booked(BASE["seed"], g, "eval", BASE["eval_episodes"]) for g in range(3)]
    assert all(isinstance(r["timesteps"], int) for r in rows) and rows[-1]["timesteps"] > 0
    assert CountingPole.steps[None] > 0  # the batch stepped on past ended episodes: the case is exercised
    counted = sum(n for seed, n in CountingPole.steps.items() if seed is not None)
    assert counted == rows[-1]["timesteps"] + sum(r["eval_steps"] for r in rows)  # no other seeded episode ran


def test_a_resume_counts_on_from_the_checkpoint(tmp_path: Path) -> None:
    """A run of 2 generations resumed to 4 logs, in its resumed rows, the checkpoint's timesteps plus the steps of the
    resumed generations' episodes: neither from 0 nor twice."""
    CountingPole.steps.clear()
    out = tmp_path / "run"
    flipes.train(out=str(out), generations=2, **BASE)
    flipes.train(resume=str(out), generations=4, progress=False, plot=False, tensorboard=False)
    rows = metrics(out)
    assert [r["generation"] for r in rows] == [0, 1, 2, 3]
    assert per_generation(rows) == [booked(BASE["seed"], g, "population", BASE["popsize"]) for g in range(4)]


@pytest.mark.parametrize("mode", ["allreduce", "seeds"])
def test_two_ranks_log_the_steps_of_both_ranks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Two ranks (threads), each rolling out its half of the population, log the same rows, whose timesteps grow by the
    steps of all members' episodes (both ranks' envs together), counted once; evaluation runs on rank 0 alone. (A resume
    under 2 processes, which takes the checkpoint's count once: tests/test_mpi.py.)"""
    CountingPole.steps.clear()
    monkeypatch.setattr(flipes.training, "_one_run_at_a_time", contextlib.nullcontext)  # two "processes" in threads

    def run(comm: Any) -> list[dict]:
        config = flipes.TrainConfig.for_env(**BASE, generations=2, episodes=2, comm=mode, out=str(tmp_path / "run"))
        return flipes.train(config, comm=comm, model=own_weights).metrics

    results = run_thread_ranks(run, 2)
    for r, result in enumerate(results):
        if isinstance(result, BaseException):
            raise AssertionError(f"rank {r} failed") from result
    zero, one = results
    assert [r["timesteps"] for r in zero] == [r["timesteps"] for r in one]
    assert per_generation(zero) == [booked(BASE["seed"], g, "population", BASE["popsize"] * 2) for g in range(2)]
    assert [r["eval_steps"] for r in zero] == [booked(BASE["seed"], g, "eval", BASE["eval_episodes"]) for g in range(2)]
