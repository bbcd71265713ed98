"""Common random numbers in rollouts (``RolloutFitness(common_episodes=True)``, ``--common-episodes``): every member's
episode k is member 0's, with the same action noise, whichever engine, part of the population or resume plays it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import metrics
from reference import member_parameters
from torch.func import functional_call

import flipes
from flipes.checkpoint import load_checkpoint, save_checkpoint
from flipes.rl import EnvPoolVectorEnv, MLPPolicy, RolloutFitness, episode_seed, make_vector_env, reset_episodes

TRAIN_KW = {"env": "flipes/Pendulum-v1", "popsize": 8, "episodes": 2, "max_episode_steps": 30, "eval_episodes": 4,
            "target": None, "tensorboard": False, "plot": False, "progress": False, "seed": 2}  # fmt: skip


@pytest.mark.parametrize("env_id", ["flipes/CartPole-v1", "gymnasium-sync:CartPole-v1"])
def test_common_episodes_reset_global_env_g_as_global_env_g_mod_k(env_id: str) -> None:
    """With ``common=K``, env i of a batch starting at global env ``first`` is reset with the seed of global env
    ``(first + i) mod K``, ``episode_seed(seed, generation, stream) + (first + i) mod K``, as a list: every member's
    episode k starts where member 0's does without ``common``, and the K episodes differ; a batch starting inside a
    member (``first`` + 1) takes its envs' own episodes, ``(first + 1 + i) mod K``."""
    k, first, n = 3, 6, 9  # members 2, 3 and 4 of a population playing 3 episodes each
    env, by_hand, member_0 = make_vector_env(env_id, n), make_vector_env(env_id, n), make_vector_env(env_id, k)
    base = episode_seed(7, 4, "population")
    got = reset_episodes(env, 7, "population", 4, first=first, common=k)
    assert torch.equal(got, torch.as_tensor(by_hand.reset(seed=[base + (first + i) % k for i in range(n)])[0]))
    assert torch.equal(got.view(3, k, -1), reset_episodes(member_0, 7, "population", 4).expand(3, k, -1))
    assert len({tuple(row.tolist()) for row in got[:k]}) == k
    assert torch.equal(reset_episodes(env, 7, "population", 4, first=first + 1, common=k), got.roll(-1, 0))
    for e in (env, by_hand, member_0):
        e.close()


def test_common_episodes_on_envpool_play_the_streams_of_global_envs_mod_k_and_parts_keep_a_pool_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On EnvPool (seeded once at creation), env i of a batch starting at global env ``first`` plays episode
    ``generation`` of the stream seeded ``episode_seed(seed, 0, stream) + (first + i) mod K``, made here by hand. A
    population rolled out in parts (each part the same seeds) keeps one pool per part, made once and advanced one episode
    per generation, with the observations of one pool of the whole population."""
    pytest.importorskip("envpool")
    k, first, n = 2, 4, 6
    env = EnvPoolVectorEnv("CartPole-v1", n, threads=1)
    streams = EnvPoolVectorEnv(
        "CartPole-v1", n, threads=1, seeds=[episode_seed(7, 0, "population") + (first + i) % k for i in range(n)]
    )
    for _ in range(4):  # episodes 0 to 3 of each stream
        expect = streams.reset()[0]
    assert torch.equal(reset_episodes(env, 7, "population", 3, first=first, common=k), expect)
    assert torch.equal(expect[:k], expect[k : 2 * k])
    for e in (env, streams):
        e.close()

    whole, part = EnvPoolVectorEnv("CartPole-v1", 8, threads=1), EnvPoolVectorEnv("CartPole-v1", 2, threads=1)
    made = []
    make_pool = part._make_pool
    monkeypatch.setattr(part, "_make_pool", lambda seeds, tag=None: made.append((seeds, tag)) or make_pool(seeds, tag))
    for g in range(4):
        want = reset_episodes(whole, 1, "population", g, common=k)
        got = [reset_episodes(part, 1, "population", g, first=first, common=k) for first in range(0, 8, 2)]
        assert torch.equal(torch.cat(got), want), g
    assert len(made) == 4 and len({seeds for seeds, _ in made}) == 1  # one pool per part, not one per part and generation
    for e in (whole, part):
        e.close()


def test_common_episodes_on_an_envpool_task_that_draws_in_its_steps_stay_common_every_generation() -> None:
    """EnvPool's LunarLander draws its engines' dispersion from each env's stream at every step, so streams stepped
    unequally part. With common episodes, each generation still starts every member's episode k where member 0's
    starts: the pool is seeded afresh, env i with ``episode_seed(seed, generation, stream) + (first + i) mod K``
    (as gymnasium's envs are), whatever the envs stepped in earlier generations."""
    pytest.importorskip("envpool")
    k, n = 2, 4
    env = EnvPoolVectorEnv("LunarLander-v3", n, threads=1)
    for g in range(3):
        obs = reset_episodes(env, 7, "population", g, common=k)
        seeds = [episode_seed(7, g, "population") + i % k for i in range(n)]
        fresh = EnvPoolVectorEnv("LunarLander-v3", n, threads=1, seeds=seeds)
        assert torch.equal(obs, fresh.reset()[0]) and torch.equal(obs[:k], obs[k:]), g
        fresh.close()
        for _ in range(5):  # member 1's envs alone step: their streams move on, member 0's do not
            env.send(np.zeros(n, dtype=np.int32), np.arange(k, n))
            env.recv()
    env.close()


def test_each_members_fitness_is_its_own_weights_on_the_common_episodes_with_their_noise(device: torch.device) -> None:
    """RolloutFitness(common_episodes=True) on flipes/Pendulum-v1 (float64), 3 episodes per member cut at 25 steps, action
    noise 0.5, at generation 1: every member's fitness equals its explicit parameters run alone on episode k's seed
    ``episode_seed(seed, 1, "population") + k`` with ``0.5 · z[k]`` added to its action at step t, z the step's
    ``(K, 1)`` draw ``torch.randn(3, 1, generator=pop.generator(f"action noise/{t}"))``, clamped to ±2, averaged over
    k (to 1e-9: Flipout's products round otherwise than materialized weights); the members' fitness differ."""
    torch.manual_seed(0)
    n, k, seed, std, steps = 6, 3, 5, 0.5, 25
    env = make_vector_env("flipes/Pendulum-v1", n * k, device)
    spaces = env.single_observation_space, env.single_action_space
    policy = flipes.flipout(MLPPolicy(*spaces, hidden=(8,), normalize=False).to(device, torch.float64))
    plain = MLPPolicy(*spaces, hidden=(8,), normalize=False).to(device, torch.float64)
    es = flipes.FlipES(policy, popsize=n, sigma=0.5, lr=0.1, seed=1)
    fitness = RolloutFitness(env, episodes=k, seed=seed, max_steps=steps, action_noise=std, common_episodes=True)
    with es.population() as pop:
        es.tell(fitness(policy, pop))
    plain.load_state_dict(policy.state_dict())
    one = make_vector_env("flipes/Pendulum-v1", 1, device)
    with es.population() as pop:
        assert pop.generation == 1
        returns = fitness(policy, pop)
        for m, params in enumerate(member_parameters(es, policy)):
            episodes = []
            for j in range(k):
                obs, total = one.reset(seed=[episode_seed(seed, 1, "population") + j])[0], 0.0
                for t in range(steps):
                    z = torch.randn(
                        k, 1, generator=pop.generator(f"action noise/{t}", device), dtype=torch.float64, device=device
                    )
                    action = (functional_call(plain, params, (obs,)) + std * z[j]).clamp(-2, 2)
                    obs, reward, terminated, truncated, _ = one.step(action)
                    total += reward.item()
                    if terminated.item() or truncated.item():
                        break
                episodes.append(total)
            assert returns[m].item() == pytest.approx(sum(episodes) / k, rel=1e-9, abs=1e-9), m
    assert len(set(returns.tolist())) == n


def test_common_episodes_in_parts_give_the_fitness_of_one_pass() -> None:
    """A population of 8 rolled out in parts of 2 members (an env of 2 × K envs) with common episodes and action noise
    gets the fitness of one pass over the whole population (the same episodes: equal up to float32 rounding, since a CPU
    BLAS may round the GEMMs of 4 and 16 rows otherwise: bit for bit on AMD EPYC, 1.4e-6 of ~150 on an Intel Xeon), and
    another fitness than independent episodes (differing by more than 1)."""
    torch.manual_seed(0)
    k = 2
    env_whole, env_part = make_vector_env("flipes/Pendulum-v1", 8 * k), make_vector_env("flipes/Pendulum-v1", 2 * k)
    policy = flipes.flipout(MLPPolicy(env_whole.single_observation_space, env_whole.single_action_space, hidden=(8,)))
    es = flipes.FlipES(policy, popsize=8, sigma=0.3, lr=0.1, seed=3)
    kw = {"episodes": k, "seed": 4, "max_steps": 20, "action_noise": 0.3, "obs_norm": None}
    with es.population() as pop:
        whole = RolloutFitness(env_whole, common_episodes=True, **kw)(policy, pop)
        parts = RolloutFitness(env_part, common_episodes=True, **kw)(policy, pop)
        independent = RolloutFitness(env_whole, **kw)(policy, pop)
    torch.testing.assert_close(parts, whole, rtol=1e-6, atol=0)
    assert (whole - independent).abs().max() > 1


def test_a_run_with_common_episodes_resumes_bit_for_bit_and_refuses_the_other_setting(tmp_path: Path) -> None:
    """flipes.train on Pendulum with common_episodes: 2 generations, then a resume to 4 (which keeps the setting
    unasked), log the parameters of 4 in one go (whose fitness differs from a run's without it); a resume that turns it
    off is refused naming both values."""
    kw = {**TRAIN_KW, "common_episodes": True}
    whole = flipes.train(**kw, generations=4, out=str(tmp_path / "whole"))
    flipes.train(**kw, generations=2, out=str(tmp_path / "part"))
    other = r"^--resume: the run was trained with other options \(--common-episodes: saved True, now False\)"
    with pytest.raises(flipes.UsageError, match=other):
        flipes.train(**{**kw, "common_episodes": False}, generations=4, resume=str(tmp_path / "part"))
    rest = flipes.train(resume=str(tmp_path / "part"), generations=4, progress=False)
    assert rest.config.common_episodes is True
    hashes = [r["params_sha256"] for r in metrics(tmp_path / "part")]
    assert hashes == [r["params_sha256"] for r in whole.metrics] and len(hashes) == 4
    independent = flipes.train(**TRAIN_KW, generations=1, out=str(tmp_path / "independent"))
    assert independent.metrics[0]["fitness_mean"] != whole.metrics[0]["fitness_mean"]


def test_a_run_saved_before_the_option_resumes_with_it_off(tmp_path: Path) -> None:
    """A run whose config.json and checkpoint lack common_episodes (saved before the option) resumes with it off and
    logs the parameters of the same run never stopped, bit for bit."""
    whole = flipes.train(**TRAIN_KW, generations=2, out=str(tmp_path / "whole"))
    old = tmp_path / "old"
    flipes.train(**TRAIN_KW, generations=1, out=str(old))
    config = json.loads((old / "config.json").read_text())
    del config["common_episodes"]
    (old / "config.json").write_text(json.dumps(config))
    state = load_checkpoint(old)
    del state["config"]["common_episodes"]
    save_checkpoint(state, old / "checkpoint.pt", keep_previous=False)
    rest = flipes.train(resume=str(old), generations=2, progress=False)
    assert rest.config.common_episodes is False
    assert [r["params_sha256"] for r in metrics(old)] == [r["params_sha256"] for r in whole.metrics]


def test_common_episodes_are_refused_with_a_fitness_of_ones_own_and_must_be_a_bool(tmp_path: Path) -> None:
    """--common-episodes with --fitness (which rolls out nothing of flipes') is refused naming the way to get it in a
    fitness of one's own; RolloutFitness refuses a common_episodes that is no bool (the string "false" would read as
    true)."""
    with pytest.raises(flipes.UsageError, match=r"^--common-episodes: .*RolloutFitness\(env, common_episodes=True\)"):
        flipes.train(fitness="no_such_module:fitness", common_episodes=True, out=str(tmp_path / "run"), progress=False)
    with pytest.raises(TypeError, match=r"^common_episodes must be True or False, got 'false'"):
        RolloutFitness(make_vector_env("flipes/CartPole-v1", 2), common_episodes="false")


class OneSeedEnv(gym.vector.VectorEnv):
    """A vector env of one's own whose reset takes one int seed only (``seed + i`` for env i)."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[torch.Tensor, dict]:
        return torch.tensor([[float((seed + i) % 2)] for i in range(self.num_envs)]), {}


def test_common_episodes_name_a_vector_env_whose_reset_takes_no_seed_list() -> None:
    """Common episodes reset with one seed per env; a vector env of one's own whose reset takes one int only gets a
    TypeError naming the env, the list it was given, its own error and the fix (its reset taking a list), not its own
    error alone; without common episodes the same env resets as before."""
    env = OneSeedEnv(4)
    with pytest.raises(TypeError, match=r"^common episodes reset OneSeedEnv with one seed per env, seed=\[\d+, \.\.\.\] .*"
                       r"raised TypeError: .*; make its reset take a list of ints, env i seeded seed\[i\]$"):  # fmt: skip
        reset_episodes(env, 1, "population", 0, common=2)
    assert reset_episodes(env, 1, "population", 0).shape == (4, 1)


class OneGeneratorEnv(OneSeedEnv):
    """A vector env of one's own that takes a list of seeds but seeds one generator for all its envs from it (numpy's
    ``default_rng`` takes a list): envs given the same seed start apart."""

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[torch.Tensor, dict]:
        rng = np.random.default_rng(seed)
        return torch.as_tensor(rng.uniform(-1, 1, (self.num_envs, 1)), dtype=torch.float32), {}


def test_common_episodes_name_a_vector_env_that_starts_envs_of_one_seed_apart() -> None:
    """A vector env whose reset takes the seed list but does not start env i from ``seed[i]`` alone would give members
    their own episodes silently; common episodes check that envs of one seed start alike and raise a ValueError naming
    the env, the two envs and the fix; without common episodes the same env resets as before."""
    env = OneGeneratorEnv(4)
    with pytest.raises(ValueError, match=r"^common episodes reset OneGeneratorEnv's envs 0 and 2 with one seed, and they "
                       r"returned other observations; .*env i's reset draw from seed\[i\] alone"):  # fmt: skip
        reset_episodes(env, 1, "population", 0, common=2)
    assert reset_episodes(env, 1, "population", 0).shape == (4, 1)
