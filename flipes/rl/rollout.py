"""Episodic returns of a whole population in one batched rollout.

Every member runs ``episodes`` episodes at once: the env batch is ``members × episodes`` and the
policy forward for all of them is ONE Flipout pass per time step. Members finish at different
times: a finished episode collects no more reward (its env may auto-reset; that is masked), and
the rollout stops once every episode is done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import Tensor, nn

from flipes.es.population import Population
from flipes.rl.normalize import RunningNorm


def episode_seed(seed: int, generation: int, stream: str) -> int:
    """Reset seed of one batch of episodes: a pure function of (seed, generation, stream)."""
    digest = hashlib.blake2b(f"flipes/episodes/{seed}/{generation}/{stream}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


@dataclass
class Episodes:
    returns: Tensor  # (num_envs,) total reward of each env's first episode
    lengths: Tensor  # (num_envs,) its steps
    steps: int  # env interactions of these episodes (the sum of their lengths)


@torch.no_grad()
def run_episodes(
    env: gym.vector.VectorEnv,
    act: Callable[[Tensor], Tensor],
    seed: int | list[int],
    record: RunningNorm | None = None,
    max_steps: int | None = None,
    members: int | None = None,
) -> Episodes:
    """Run one episode in every env of ``env`` with ``act(obs) -> actions``, at most ``max_steps``
    steps (the env's own truncation otherwise).

    ``seed``: gymnasium's convention, env ``i`` is reset with ``seed + i`` (or ``seed[i]``).
    ``record``: observations of unfinished episodes are added to its pending statistics, per
    member when ``members`` is given (envs ``m·K .. m·K+K-1`` belong to member ``m``).
    """
    obs, _ = env.reset(seed=seed)
    device = obs.device
    n = env.num_envs
    returns = torch.zeros(n, dtype=torch.float64, device=device)
    lengths = torch.zeros(n, dtype=torch.int64, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    t = 0
    while max_steps is None or t < max_steps:
        if record is not None:
            m = members or n
            record.record(obs.view(m, n // m, -1), alive.view(m, n // m))
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        t += 1
        returns += torch.as_tensor(reward, device=device).double() * alive
        lengths += alive
        alive &= ~(torch.as_tensor(terminated, device=device) | torch.as_tensor(truncated, device=device))
        if not alive.any():
            break
    return Episodes(returns, lengths, int(lengths.sum()))


class RolloutFitness:
    """``fitness(model, pop)``: each member's mean return over ``episodes`` episodes.

    Args:
        env: a vector env with ``pop.size * episodes`` envs, torch in and out
            (``flipes.rl.make_vector_env``).
        episodes: episodes per member, K.
        seed: with the generation, seeds the episodes' resets.
        obs_norm: the policy's ``RunningNorm``; observations of the population are recorded into
            it (its statistics stay frozen until ``obs_norm.update()``, called after ``tell``).

    Attributes:
        timesteps: env steps used so far.
    """

    def __init__(self, env: gym.vector.VectorEnv, episodes: int = 1, seed: int = 0, obs_norm: RunningNorm | None = None) -> None:
        self.env, self.episodes, self.seed, self.obs_norm = env, episodes, seed, obs_norm
        self.timesteps = 0

    def __call__(self, model: nn.Module, pop: Population) -> Tensor:
        n, k = pop.size, self.episodes
        if self.env.num_envs != n * k:
            raise ValueError(
                f"the env has {self.env.num_envs} copies but the population needs members × episodes = {n} × {k}; "
                f"make it with num_envs={n * k}"
            )

        def act(obs: Tensor) -> Tensor:  # (n·k, d) -> members first (n, k, d) -> (n·k, ...)
            return model(obs.view(n, k, *obs.shape[1:])).flatten(0, 1)

        # env i of member m, episode k gets seed base + m·K + k with m the GLOBAL member index, so a
        # member's episodes do not depend on how the population is split across processes
        first = episode_seed(self.seed, pop.generation, "population") + pop.members.start * k
        ep = run_episodes(self.env, act, [first + i for i in range(n * k)], record=self.obs_norm, members=n)
        self.timesteps += ep.steps
        return ep.returns.view(n, k).mean(1)
