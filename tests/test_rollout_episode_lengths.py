"""RolloutFitness.last_lengths: each member's episode lengths of the latest call, against the env's own done flags."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

import flipes
from flipes.rl import MLPPolicy, RolloutFitness


class _Dones(gym.vector.VectorWrapper):
    """Keeps every step's ``terminated | truncated``, one list per reset (a part of the population each)."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.resets: list[list[np.ndarray]] = []

    def reset(self, **kwargs):  # type: ignore[no-untyped-def]
        self.resets.append([])
        return self.env.reset(**kwargs)

    def step(self, actions):  # type: ignore[no-untyped-def]
        out = self.env.step(actions)
        self.resets[-1].append(out[2] | out[3])
        return out


def _lengths(done: list[np.ndarray], cap: int) -> list[int]:
    """Each env's first episode length: the step its first done flag came, cut at ``cap``."""
    flags = np.stack(done)
    return [min(int(np.argmax(flags[:, i])) + 1 if flags[:, i].any() else len(flags), cap) for i in range(flags.shape[1])]


def test_last_lengths_are_each_members_episode_steps() -> None:
    """``last_lengths[m, k]`` is member m's episode k's length, as the env's done flags and the ``max_steps`` cut give
    it, in one pass and in parts of the population; their sum is the call's ``timesteps``."""
    popsize, episodes, cap = 4, 2, 9
    for per_pass in (popsize, 2):
        env = _Dones(gym.make_vec("CartPole-v1", num_envs=per_pass * episodes, vectorization_mode="sync"))
        torch.manual_seed(0)
        policy = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(4,))
        es = flipes.FlipES(policy, popsize=popsize, sigma=0.5, lr=0.1, seed=0)
        fitness = RolloutFitness(env, episodes=episodes, seed=3, max_steps=cap)
        with es.population() as pop:
            fitness(policy, pop)
        assert len(env.resets) == popsize // per_pass
        expected = [n for done in env.resets for n in _lengths(done, cap)]
        assert fitness.last_lengths is not None and fitness.last_lengths.dtype == torch.int64
        assert fitness.last_lengths.tolist() == torch.tensor(expected).view(popsize, episodes).tolist()
        assert int(fitness.last_lengths.sum()) == fitness.timesteps
        assert (fitness.last_lengths == cap).any() and (fitness.last_lengths < cap).any()  # both kinds of end were seen


def test_a_limit_grown_from_last_lengths_cuts_the_next_call() -> None:
    """A limit of one's own (OpenAI's ES starter's adaptive cutoff): grown after a call where most episodes were cut,
    the next call's episodes run up to the new ``max_steps``."""
    env = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="sync")
    torch.manual_seed(1)
    policy = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(4,))
    es = flipes.FlipES(policy, popsize=8, sigma=0.1, lr=0.1, seed=0)
    fitness = RolloutFitness(env, seed=0, max_steps=5)
    with es.population() as pop:
        fitness(policy, pop)
    assert fitness.last_lengths is not None and bool((fitness.last_lengths == 5).float().mean() >= 0.5)
    fitness.max_steps = 10
    with es.population() as pop:
        fitness(policy, pop)
    assert int(fitness.last_lengths.max()) == 10
