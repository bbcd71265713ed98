"""Batched rollouts against a per-member reference: each member's explicit weights ``W̄ + σ ε ∘ (s_n r_nᵀ)`` run alone,
one episode at a time, in gymnasium's own env (``gymnasium.make``) seeded as :func:`reset_episodes` seeds the member's
global env, its state carried from step to step for a recurrent policy."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from reference import member_parameters
from torch.func import functional_call

import flipes
from flipes.rl import GRUPolicy, MLPPolicy, RolloutFitness, episode_seed, make_vector_env

# generation 0's returns may tie (MountainCar's -1 per step until the time limit): no signal is expected of them
pytestmark = pytest.mark.filterwarnings("ignore::flipes.EqualFitnessWarning")

# (id, max_steps): Acrobot and MountainCar cut short (their random policies run to the time limit), and MountainCar-v0 at
# its own 200 steps through a TimeLimit of 40 to check truncation by the env
CASES = [
    ("CartPole-v1", None, {}),
    ("Acrobot-v1", 30, {}),
    ("MountainCar-v0", None, {"max_episode_steps": 40}),
    ("MountainCarContinuous-v0", 30, {}),
    ("Pendulum-v1", 30, {}),
]


@torch.no_grad()
def alone(policy: torch.nn.Module, params: dict, env: gym.Env, seed: int, max_steps: int | None) -> tuple[float, int, np.ndarray]:
    """One episode of ``policy`` holding ``params`` on ``env`` reset with ``seed``: its return, length and final
    observation."""
    obs, total, t, state = env.reset(seed=seed)[0], 0.0, 0, None
    recurrent = isinstance(policy, GRUPolicy)
    while max_steps is None or t < max_steps:
        x = torch.as_tensor(obs)[None]
        out = functional_call(policy, params, (x, state) if recurrent else (x,))
        action, state = out if recurrent else (out, None)
        obs, reward, terminated, truncated, _ = env.step(action[0].numpy())
        total, t = total + float(reward), t + 1
        if terminated or truncated:
            break
    return total, t, obs


@pytest.mark.parametrize("policy_class", [MLPPolicy, GRUPolicy])
@pytest.mark.parametrize("env_id,max_steps,kwargs", CASES, ids=[c[0] for c in CASES])
def test_each_members_return_is_its_explicit_weights_run_alone_in_gymnasiums_env(
    env_id: str, max_steps: int | None, kwargs: dict, policy_class: type
) -> None:
    """RolloutFitness on gymnasium's own envs (``gymnasium-sync:``), 4 members × 2 episodes, float64 policy, at
    generation 1 (after the observation statistics of generation 0 were merged, so normalization is in force): each
    member's mean return equals that of its explicit parameters (``reference.member_parameters``) run alone on
    ``gymnasium.make(id)`` reset with ``episode_seed(seed, 1, "population") + 2m + k``, to 1e-9 (Flipout's products
    round otherwise than materialized weights), its episodes' final observations (``last_final_obs``: terminated,
    truncated by the env's TimeLimit or cut at ``max_steps``) are theirs, and ``timesteps`` counts exactly their steps."""
    torch.manual_seed(0)
    n, k, seed = 4, 2, 3
    env = make_vector_env(f"gymnasium-sync:{env_id}", n * k, note=None, **kwargs)
    spaces = env.single_observation_space, env.single_action_space
    policy = policy_class(*spaces, hidden=(8,)).double()
    es = flipes.FlipES(policy, popsize=n, sigma=0.5, lr=0.1, seed=1)
    fitness = RolloutFitness(env, episodes=k, seed=seed, max_steps=max_steps, final_obs=True)
    with es.population() as pop:
        es.tell(fitness(policy, pop))
    policy.obs_norm.update()
    assert policy.obs_norm.count.item() > 0
    plain = copy.deepcopy(policy)  # outside a population: the plain layers, with the merged statistics
    one = gym.make(env_id, **kwargs)
    with es.population() as pop:
        before = fitness.timesteps
        returns = fitness(policy, pop)
        steps = 0
        for m, params in enumerate(member_parameters(es, policy)):
            episodes = [alone(plain, params, one, episode_seed(seed, 1, "population") + m * k + j, max_steps) for j in range(k)]
            steps += sum(length for _, length, _ in episodes)
            expected = np.mean([r for r, _, _ in episodes])
            assert returns[m].item() == pytest.approx(expected, rel=1e-9, abs=1e-9), m
            finals = np.stack([last for _, _, last in episodes])
            np.testing.assert_allclose(fitness.last_final_obs[m].numpy(), finals, rtol=1e-6, atol=1e-6)
        assert fitness.timesteps - before == steps
