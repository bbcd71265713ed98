"""The env engines behind gymnasium ids: EnvPool's C++ threads, gymnasium's SyncVectorEnv and
AsyncVectorEnv workers, each against gymnasium's own MuJoCo envs."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import FAST_KW, ROOT, metrics, once_per_session, reference_env

import flipes
from flipes.rl import EnvPoolVectorEnv, make_vector_env, reset_episodes, run_episodes
from flipes.rl import envs as engine
from flipes.seeds import t_quantile

pytest.importorskip("mujoco")
IDS = ["HalfCheetah-v5", "Hopper-v5"]
BACKENDS = ["envpool", "gymnasium-sync", "gymnasium-async"]
EPISODES = 48  # random-policy episodes per side of each comparison


def needs(backend: str) -> None:
    if backend == "envpool":
        pytest.importorskip("envpool")


def random_policy(space: gym.spaces.Box, seed: int):
    gen = torch.Generator().manual_seed(seed)
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)

    def act(obs: torch.Tensor) -> torch.Tensor:
        return low + (high - low) * torch.rand(obs.shape[0], *low.shape, generator=gen)

    return act


def reference_episodes(tmp_path_factory: pytest.TempPathFactory, env_id: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of n random-policy episodes on gymnasium's own SyncVectorEnv, played by a plain numpy loop
    here (each env's rewards summed up to its first end): none of flipes' engines, wrappers or rollout code, so the
    gymnasium-sync and gymnasium-async backends are compared with something other than themselves. Played once per
    test session (saved exactly, as .npy): every backend's test compares with the same episodes (fixed seeds)."""
    from flipes.rl.mujoco_log import mujoco_warnings_once

    def make(out: Path) -> None:
        with mujoco_warnings_once(report=False, load=True):  # MuJoCo's compile notes, as reference_env drops them
            env = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")
        act = random_policy(env.single_action_space, seed + 1)
        obs, _ = env.reset(seed=seed)
        returns, lengths, running = np.zeros(n), np.zeros(n), np.ones(n, dtype=bool)
        while running.any():
            obs, reward, terminated, truncated, _ = env.step(act(torch.as_tensor(obs)).numpy())
            returns += np.where(running, reward, 0.0)
            lengths += running
            running &= ~(terminated | truncated)
        env.close()
        np.save(out / "returns.npy", returns)
        np.save(out / "lengths.npy", lengths)

    out = once_per_session(tmp_path_factory, f"reference-{env_id}-{n}-{seed}", make)
    return np.load(out / "returns.npy"), np.load(out / "lengths.npy")


def welch_z(a: np.ndarray, b: np.ndarray) -> float:
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return abs(a.mean() - b.mean()) / se if se > 0 else (0.0 if a.mean() == b.mean() else math.inf)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


# Every statistical check below (3 backends × 2 ids × 2 quantities × 2 tests) runs at a false-alarm
# rate of 1e-3 / 24 (Bonferroni), so the whole file raises a false alarm with probability < 1e-3.
ALPHA = 1e-3 / 24
# Welch's statistic of two samples of n is Student's t with n - 1 to 2n - 2 degrees of freedom (Welch-Satterthwaite), not
# normal: at n = 48 the normal quantile (4.10) would be crossed 4x as often as ALPHA; n - 1 d.o.f. is the safe end.
T_CRIT = t_quantile(1 - ALPHA / 2, EPISODES - 1)  # 4.52
KS_CRIT = math.sqrt(-math.log(ALPHA / 2) / 2) * math.sqrt(2 / EPISODES)  # asymptotic two-sample KS, equal sizes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", IDS)
def test_spaces_and_random_returns_match_gymnasium(backend: str, env_id: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Same spaces as gymnasium's env; random-policy returns and episode lengths are equal in
    mean (Welch z) and distribution (two-sample KS) to gymnasium's, at the stated rate."""
    needs(backend)
    single = reference_env(env_id)
    env = make_vector_env(f"{backend}:{env_id}", EPISODES, threads=2)
    assert env.single_observation_space == single.observation_space
    assert env.single_action_space == single.action_space
    ep = run_episodes(env, random_policy(env.single_action_space, 7), seed=10_000)
    env.close()
    returns, lengths = ep.returns.numpy(), ep.lengths.numpy().astype(float)
    ref_returns, ref_lengths = reference_episodes(tmp_path_factory, env_id, EPISODES, seed=20_000)
    assert ep.steps == int(lengths.sum())
    for name, a, b in (("returns", returns, ref_returns), ("lengths", lengths, ref_lengths)):
        assert welch_z(a, b) < T_CRIT, (name, a.mean(), b.mean())
        assert ks_statistic(a, b) < KS_CRIT, (name, ks_statistic(a, b))
    if env_id == "HalfCheetah-v5":  # never terminates: every episode is truncated at 1000 steps
        assert (lengths == 1000).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_finished_episodes_are_masked(backend: str) -> None:
    """A return is the sum of the rewards up to the env's first end, its length that step count,
    and nothing after an end is counted (Hopper terminates early under a random policy)."""
    needs(backend)
    env = make_vector_env(f"{backend}:Hopper-v5", 16, threads=2)
    log: list[tuple[torch.Tensor, torch.Tensor]] = []
    step = env.step

    def logged_step(actions: torch.Tensor):
        out = step(actions)
        log.append((out[1].clone(), (out[2] | out[3]).clone()))
        return out

    env.step = logged_step  # type: ignore[method-assign]
    ep = run_episodes(env, random_policy(env.single_action_space, 3), seed=5)
    rewards = torch.stack([r for r, _ in log]).double()
    done = torch.stack([d for _, d in log])
    first_end = done.int().argmax(0)  # every Hopper episode ends within the rollout
    assert done.any(0).all()
    assert torch.equal(ep.lengths, first_end + 1)
    expected = torch.stack([rewards[: first_end[i] + 1, i].sum() for i in range(16)])
    torch.testing.assert_close(ep.returns, expected, rtol=0, atol=1e-9)
    assert len(log) == int(ep.lengths.max())  # the rollout stops with the last episode


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", IDS)
def test_rollouts_are_deterministic_and_independent_of_the_split(backend: str, env_id: str) -> None:
    """The same seed and generation give the same episodes, on fresh envs and when the envs are
    split over two vector envs (as over two processes); another generation, on an env reset for it,
    gives others."""
    needs(backend)
    weight = torch.randn(
        reference_env(env_id).observation_space.shape[0],
        reference_env(env_id).action_space.shape[0],
        generator=torch.Generator().manual_seed(0),
    )

    def policy(obs: torch.Tensor) -> torch.Tensor:  # a fixed deterministic policy
        return torch.tanh(obs.float() @ weight * 0.3)

    def episodes(first: int, n: int, generation: int, env: gym.vector.VectorEnv | None = None) -> torch.Tensor:
        """On a fresh env unless ``env`` (left open) is given; gymnasium-async starts its worker processes each time."""
        fresh = env is None
        env = make_vector_env(f"{backend}:{env_id}", n, threads=2) if env is None else env
        obs = reset_episodes(env, seed=3, stream="population", generation=generation, first=first)
        returns = run_episodes(env, policy, obs=obs, max_steps=300).returns
        if fresh:
            env.close()
        return returns

    whole = episodes(0, 8, generation=2)
    again = make_vector_env(f"{backend}:{env_id}", 8, threads=2)
    assert torch.equal(whole, episodes(0, 8, 2, env=again))  # a fresh env
    assert torch.equal(whole, torch.cat([episodes(0, 4, 2), episodes(4, 4, 2)]))
    assert not torch.equal(whole, episodes(0, 8, 3, env=again))
    again.close()


def test_envpool_streams_fast_forward_like_consecutive_generations() -> None:
    """EnvPool seeds each env once; generation g's episode on a fresh pool (a resumed run) equals
    the one reached by playing generations 0..g in turn."""
    pytest.importorskip("envpool")
    env = EnvPoolVectorEnv("Hopper-v5", 6, threads=2)
    first = [reset_episodes(env, 1, "population", g).clone() for g in range(4)]
    assert all(not torch.equal(first[g], first[g + 1]) for g in range(3))
    fresh = EnvPoolVectorEnv("Hopper-v5", 6, threads=2)
    assert torch.equal(reset_episodes(fresh, 1, "population", 3), first[3])
    assert torch.equal(reset_episodes(fresh, 1, "population", 1), first[1])  # going back recreates the pool


def test_a_resume_on_envpool_of_an_env_drawing_in_its_steps_says_it_plays_other_episodes(tmp_path: Path) -> None:
    """EnvPool fast-forwards a resumed run's streams by resets alone, which replays an env whose randomness is all at
    reset (Taxi here, MuJoCo, classic control) but not one that draws in its steps: slippery FrozenLake's resumed
    rows count other timesteps than the run never stopped, and the resume says so in a warning naming the
    gymnasium: engine, whose resume is bit for bit; a resume of Taxi or of gymnasium's FrozenLake says nothing, nor
    does one of FrozenLake with common episodes (reseeded every generation: bit for bit) or one stopped before its
    first generation (no episode to fast-forward: it replays the run)."""
    pytest.importorskip("envpool")
    said, rows_of = {}, {}
    runs = (("FrozenLake-v1", False, False), ("Taxi-v3", False, True), ("gymnasium:FrozenLake-v1", False, True),
            ("FrozenLake-v1", True, True))  # fmt: skip
    for env, common, exact in runs:
        kw = {**FAST_KW, "env": env, "hidden": [4], "eval_every": 100, "max_episode_steps": 40, "common_episodes": common}
        key = env + " common" * common
        name = key.replace(":", "-").replace(" ", "-")
        full = flipes.train(**kw, generations=3, out=str(tmp_path / f"{name}-full"))
        rows_of[key] = [(r["timesteps"], r["params_sha256"]) for r in full.metrics]
        flipes.train(**kw, generations=1, out=str(tmp_path / name))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            flipes.train(**kw, generations=3, resume=str(tmp_path / name))
        said[key] = [str(w.message) for w in caught if "draws random numbers in its steps" in str(w.message)]
        rows = [(r["timesteps"], r["params_sha256"]) for r in metrics(tmp_path / name)]
        assert (rows == [(r["timesteps"], r["params_sha256"]) for r in full.metrics]) is exact, key
    assert said["Taxi-v3"] == said["gymnasium:FrozenLake-v1"] == said["FrozenLake-v1 common"] == []
    assert len(said["FrozenLake-v1"]) == 1
    assert "FrozenLake-v1 (its slippery ice)" in said["FrozenLake-v1"][0]
    assert "--env gymnasium:FrozenLake-v1 reseeds every generation" in said["FrozenLake-v1"][0]

    class StopAtStart(flipes.Callback):
        def on_train_start(self, state: object) -> None:
            raise KeyboardInterrupt  # a Ctrl-C before the first generation: its checkpoint is at generation 0

    kw = {**FAST_KW, "env": "FrozenLake-v1", "hidden": [4], "eval_every": 100, "max_episode_steps": 40}
    with pytest.raises(KeyboardInterrupt):
        flipes.train(**kw, generations=3, out=str(tmp_path / "at-0"), callbacks=[StopAtStart()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flipes.train(**kw, generations=3, resume=str(tmp_path / "at-0"))
    assert not [w for w in caught if "draws random numbers in its steps" in str(w.message)]
    assert [(r["timesteps"], r["params_sha256"]) for r in metrics(tmp_path / "at-0")] == rows_of["FrozenLake-v1"]


def test_envpool_streams_replay_an_episode_asked_again_and_take_seeds_modulo_2_31() -> None:
    """``reset_streams(seeds, e)`` asked again for the episode the envs are in plays that episode again (a new pool,
    fast-forwarded), not the next one; seeds are reduced modulo 2³¹ (EnvPool's int32): s + 2³¹ is seed s, s + 2³⁰ is
    another."""
    pytest.importorskip("envpool")
    env = EnvPoolVectorEnv("Hopper-v5", 2, threads=1)
    first = env.reset_streams([3, 4], 1)[0].clone()
    assert torch.equal(env.reset_streams([3, 4], 1)[0], first)
    assert not torch.equal(env.reset_streams([3, 4], 2)[0], first)
    assert torch.equal(env.reset_streams([3 + 2**31, 4 + 2**31], 1)[0], first)
    assert not torch.equal(env.reset_streams([3 + 2**30, 4 + 2**30], 1)[0], first)
    env.close()


def test_envpool_envs_truncated_by_the_time_limit_stay_ended_until_reset() -> None:
    """EnvPool envs truncated at ``max_episode_steps`` (CartPole, 4 steps) are not stepped again: they keep their last
    observation, a reward of 0 and truncated=True; a masked reset starts env 0 alone, whose flags clear and which steps
    (reward 1), while the others stay as they were."""
    pytest.importorskip("envpool")
    env = EnvPoolVectorEnv("CartPole-v1", 3, threads=1, max_episode_steps=4)
    env.reset(seed=0)
    actions = torch.tensor([0, 1, 0])
    for _ in range(4):
        obs, reward, terminated, truncated, _ = env.step(actions)
    assert truncated.all() and not terminated.any() and (reward == 1).all()
    last = obs.clone()
    obs, reward, terminated, truncated, _ = env.step(actions)
    assert torch.equal(obs, last) and (reward == 0).all() and truncated.all() and not terminated.any()
    env.reset(options={"reset_mask": np.array([True, False, False])})
    obs, reward, terminated, truncated, _ = env.step(actions)
    assert reward.tolist() == [1.0, 0.0, 0.0] and truncated.tolist() == [False, True, True] and not terminated.any()
    assert torch.equal(obs[1:], last[1:])
    env.close()


class _Reversed:
    """An EnvPool pool that returns each batch's envs in reverse order, as its threads may (finishing in any order)."""

    def __init__(self, pool: object) -> None:
        self.pool = pool

    def reset(self, **kwargs: object) -> tuple:
        obs, info = self.pool.reset(**kwargs)
        return obs[::-1].copy(), {**info, "env_id": info["env_id"][::-1].copy()}

    def send(self, *args: object) -> None:
        self.pool.send(*args)

    def recv(self, **kwargs: object) -> tuple:
        *rows, info = self.pool.recv(**kwargs)
        return (*(x[::-1].copy() for x in rows), {**info, "env_id": info["env_id"][::-1].copy()})

    def close(self) -> None:
        self.pool.close()


def test_envpool_rows_follow_the_env_ids_whatever_order_the_pool_returns_them_in() -> None:
    """EnvPool's threads may return a batch's envs in any order: with a pool that returns them reversed, the
    observations, rewards and flags of Pendulums reset, stepped to their time limit, two of them reset by a mask and
    stepped on without the third, are those of the plain pool."""
    pytest.importorskip("envpool")
    results = []
    for reverse in (False, True):
        env = EnvPoolVectorEnv("Pendulum-v1", 3, threads=1, max_episode_steps=3)
        env._make_pool([5, 6, 7])
        if reverse:
            env._pool = _Reversed(env._pool)
        out = [env.reset()[0]]
        actions = torch.tensor([[-1.0], [0.5], [2.0]])
        for _ in range(3):
            out += env.step(actions)[:4]
        out.append(env.reset(options={"reset_mask": np.array([True, False, True])})[0])
        out += env.step(actions)[:4]
        results.append(out)
        env.close()
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    rewards = results[0][-3]
    assert rewards[1] == 0 and len({rewards[0].item(), rewards[2].item()}) == 2  # env 1 ended; the others differ


def test_envpool_envs_reset_by_a_mask_play_a_new_episode_and_the_others_stay_ended() -> None:
    """``reset(options={"reset_mask": m})`` starts a new episode in the masked envs alone: once every Hopper has ended,
    the masked ones start standing (torso height 1.25 within Hopper's reset noise of 0.005) and step again (a nonzero
    reward, a new observation, no end flag), the others keep their last observation, a reward of 0 and their end flag."""
    pytest.importorskip("envpool")
    env = EnvPoolVectorEnv("Hopper-v5", 4, threads=2)
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    while not env.done.all():  # random Hopper falls (or is cut at 1000 steps)
        env.step(2 * torch.rand(4, 3, generator=gen) - 1)
    mask = torch.tensor([True, False, True, False])
    start = env.reset(options={"reset_mask": mask})[0]
    obs, reward, terminated, truncated, _ = env.step(torch.zeros(4, 3))
    assert ((start[mask, 0] - 1.25).abs() < 0.01).all()
    assert (reward[mask] != 0).all() and not (terminated | truncated)[mask].any() and (obs[mask] != start[mask]).any(1).all()
    assert (reward[~mask] == 0).all() and (terminated | truncated)[~mask].all() and torch.equal(obs[~mask], start[~mask])
    assert env.done.tolist() == [False, True, False, True]
    env.close()


def test_reset_episodes_seeds_each_global_env_by_the_documented_rule() -> None:
    """Env i of a batch starting at global env ``first`` plays, for (seed, stream, generation): on an engine seeded at
    reset, the episode of ``reset(seed=episode_seed(seed, generation, stream) + first)``; on EnvPool, episode number
    ``generation`` of the stream seeded ``episode_seed(seed, 0, stream) + first + i``, made here by hand."""
    from flipes.rl import episode_seed

    cartpole, by_hand = make_vector_env("flipes/CartPole-v1", 5), make_vector_env("flipes/CartPole-v1", 5)
    expect = by_hand.reset(seed=episode_seed(7, 3, "population") + 4)[0]
    assert torch.equal(reset_episodes(cartpole, 7, "population", 3, first=4), expect)
    pytest.importorskip("envpool")
    env = EnvPoolVectorEnv("Hopper-v5", 3, threads=2)
    streams = EnvPoolVectorEnv("Hopper-v5", 3, threads=2, seeds=[episode_seed(7, 0, "eval") + 4 + i for i in range(3)])
    for _ in range(3):  # episodes 0, 1, 2 of each stream
        expect = streams.reset()[0]
    assert torch.equal(reset_episodes(env, 7, "eval", 2, first=4), expect)
    env.close()
    streams.close()


def test_envpool_streams_in_turn_keep_a_pool_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """A population rolled out in parts (one env of a part's size, its seed sets in turn): each part's
    pool is made once and advances one episode per generation, as one pool of the whole population
    does, with the same observations; pools past MAX_PARKED are closed, the longest parked first, with a
    warning that says what that costs."""
    pytest.importorskip("envpool")
    from flipes.rl import envpool_vec

    whole = EnvPoolVectorEnv("Hopper-v5", 8, threads=2)
    part = EnvPoolVectorEnv("Hopper-v5", 2, threads=2)
    made = []
    make_pool = part._make_pool
    monkeypatch.setattr(part, "_make_pool", lambda seeds, tag=None: made.append(seeds) or make_pool(seeds, tag))
    for g in range(5):
        want = reset_episodes(whole, 1, "population", g)
        got = [reset_episodes(part, 1, "population", g, first=first) for first in range(0, 8, 2)]
        assert torch.equal(torch.cat(got), want), g
    assert len(made) == 4 and len(set(made)) == 4  # one per part, not one per part and generation
    monkeypatch.setattr(envpool_vec, "MAX_PARKED", 2)
    with pytest.warns(UserWarning, match=r"more than 3 seed sets in turn .*\(a larger --members-per-pass\)"):
        reset_episodes(part, 1, "population", 5, first=0)  # parks the last part's, takes the first's: 3 parked, 1 closed
    assert len(part._parked) == 2 and len(made) == 4
    part.close()
    assert not part._parked and part._pool is None


def test_pipelined_rollout_equals_the_serial_one() -> None:
    """Stepping half of the envs while the policy computes the other half's actions changes
    nothing: the same returns, lengths and observation statistics, bit for bit."""
    pytest.importorskip("envpool")
    import flipes
    from flipes.rl import MLPPolicy, RolloutFitness

    results = []
    for pipeline in (False, True):
        env = make_vector_env("envpool:Hopper-v5", 24, threads=2)
        torch.manual_seed(0)
        policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(16,)))
        es = flipes.FlipES(policy, popsize=12, sigma=0.5, seed=4)
        fitness = RolloutFitness(env, episodes=2, seed=9, obs_norm=policy.obs_norm, pipeline=pipeline)
        with es.population() as pop:
            f = fitness(policy, pop)
        results.append((f, fitness.timesteps, policy.obs_norm.pending.clone()))
    (f0, t0, p0), (f1, t1, p1) = results
    assert torch.equal(f0, f1) and t0 == t1 and torch.equal(p0, p1)
    assert len(set(f0.tolist())) > 1  # the members differ


def test_worker_processes_match_sync_vector_env_exactly() -> None:
    """gymnasium's AsyncVectorEnv with a block of envs per worker returns exactly what
    SyncVectorEnv returns for the same seeds and actions."""
    a = make_vector_env("gymnasium-async:Hopper-v5", 6, threads=3)
    b = make_vector_env("gymnasium-sync:Hopper-v5", 6)
    torch.testing.assert_close(a.reset(seed=11)[0], b.reset(seed=11)[0], rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        actions = torch.rand(6, 3, generator=gen) * 2 - 1
        for x, y in zip(a.step(actions)[:4], b.step(actions)[:4], strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    a.close()


def test_auto_backend_falls_back_with_one_note_and_wrong_ids_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without EnvPool a gymnasium id still runs, with a one-line note naming the extra; an id the
    forced backend lacks is an error that names what to use instead."""
    notes: list[str] = []
    monkeypatch.setattr(engine, "envpool_ids", frozenset)  # as if EnvPool were not installed
    env = make_vector_env("Hopper-v5", 4, threads=2, note=notes.append)
    assert len(notes) == 1 and "\n" not in notes[0] and "flipes[envpool]" in notes[0]
    assert not isinstance(env, EnvPoolVectorEnv)
    with pytest.raises(ValueError, match=r"needs EnvPool, which is not installed; pip install 'flipes\[envpool\]'"):
        make_vector_env("envpool:Hopper-v5", 4)
    monkeypatch.undo()
    if ids := engine.envpool_ids():
        # a gymnasium id this EnvPool lacks, read from both registries: EnvPool adds ids between releases (1.2.7 has Taxi-v4)
        name = min(i for i in gym.registry if i not in ids and "/" not in i and ":" not in i)
        with pytest.raises(ValueError, match=rf"EnvPool has no env '{re.escape(name)}'.*use gymnasium:{re.escape(name)}"):
            make_vector_env(f"envpool:{name}", 4)
        quiet: list[str] = []
        assert isinstance(make_vector_env("Hopper-v5", 4, note=quiet.append), EnvPoolVectorEnv) and not quiet
    with pytest.raises(ValueError, match="unknown env id 'gymnasium:Hoper-v5'"):
        make_vector_env("gymnasium:Hoper-v5", 4)


@pytest.mark.parametrize("env_id", ["flipes/CartPole-v1", "gymnasium:CartPole-v1"])
def test_a_count_of_copies_or_a_device_make_vector_env_cannot_take_is_named_before_any_engine(env_id: str) -> None:
    """make_vector_env refuses a num_envs that is no integer of at least 1 (0 was gymnasium's IndexError from an empty
    list of envs, 1.5 numpy's TypeError, '4' a str compared with an int) and a device name torch has no device for
    (torch's list of every device type), each in one line, on every engine; an integer of numpy's is a count."""
    for count in (0, -1, 1.5, "4"):
        with pytest.raises(
            ValueError, match=rf"^make_vector_env: num_envs is the number of copies, .* got {re.escape(repr(count))}$"
        ):
            make_vector_env(env_id, count)
    with pytest.raises(flipes.UsageError, match=r"^--device: unknown device 'gpu'; use cpu, cuda, cuda:N or mps$"):
        make_vector_env(env_id, 2, device="gpu")
    env = make_vector_env(env_id, np.int64(2), note=None)
    assert env.num_envs == 2
    env.close()


def test_a_short_es_run_on_halfcheetah_through_envpool_raises_the_center_return(tmp_path) -> None:
    """Five generations of 64 members (160 k EnvPool steps, episodes cut at 500 steps) raise the center policy's
    return on 5 evaluation episodes by more than 150: HalfCheetah's return is a sum of per-step rewards, so the bar is
    the 300 of 1000-step episodes scaled to half the horizon
    (measured at 500 steps: seed 0 -4 -> 287, seed 1 -11 -> 433, seed 2 -3 -> 216; at 1000: seed 0 -8 -> 823, seed 1
    -22 -> 491). With each generation's fitness shuffled among its members (no signal), seed 1 drifts -192 at 500 steps
    and -718 at 1000: learning minus drift is 4.2 bars at 500 steps, 4.1 at 1000."""
    pytest.importorskip("envpool")
    import flipes

    rows = flipes.train(env="envpool:HalfCheetah-v5", popsize=64, sigma=0.03, lr=0.04, generations=5, eval_every=4, seed=0,
                        max_episode_steps=500, target=None, tensorboard=False, plot=False, progress=False,
                        out=str(tmp_path / "run")).metrics  # fmt: skip
    evals = {r["generation"]: r["eval_return"] for r in rows if "eval_return" in r}
    assert set(evals) == {0, 4}
    assert rows[-1]["timesteps"] == 5 * 64 * 500  # every training episode ran to the cut (HalfCheetah never ends)
    assert evals[4] > evals[0] + 150, evals


def test_envpool_reset_with_the_wrong_number_of_seeds_says_how_to_seed() -> None:
    """EnvPoolVectorEnv.reset(seed=[...]) with a seed count other than num_envs raises a ValueError naming both
    counts and the two ways to seed (one seed per env, or one int for all)."""
    pytest.importorskip("envpool")
    env = EnvPoolVectorEnv("CartPole-v1", num_envs=3)
    try:
        with pytest.raises(ValueError, match=r"got 2 seeds for 3 envs; pass one seed per env \(3 ints\), or .*one int s"):
            env.reset(seed=[1, 2])
        obs, _ = env.reset(seed=[1, 2, 3])
        assert obs.shape[0] == 3
    finally:
        env.close()


# a user's script: CartPole copies in worker processes (its own module in the forkserver's preload list), then
# HalfCheetah copies in this process and in worker processes
WORKER_SCRIPT = """
import sys, multiprocessing, multiprocessing.forkserver
from flipes.rl import make_vector_env
if __name__ == '__main__':
    multiprocessing.set_forkserver_preload(['__main__', 'colorsys'])  # the user's own
    make_vector_env('gymnasium-async:CartPole-v1', 4, threads=2, note=None).close()
    print('mujoco' in sys.modules, multiprocessing.forkserver._forkserver._preload_modules)
    for backend in ('gymnasium-sync', 'gymnasium-async'):
        make_vector_env(f'{backend}:HalfCheetah-v5', 4, threads=2, note=None).close()
    print('made')
"""


@pytest.fixture(scope="module")
def worker_script(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """WORKER_SCRIPT run once as a fresh process (a new interpreter and forkserver cost seconds), in a directory of
    its own: its completed process and that working directory."""
    cwd = tmp_path_factory.mktemp("worker-script")
    (cwd / "make.py").write_text(WORKER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "make.py"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120), cwd


def test_halfcheetah_copies_print_no_mujoco_note_and_leave_no_log_file(worker_script) -> None:
    """gymnasium's HalfCheetah XML makes MuJoCo warn about a deprecated attribute at every load; N copies, in this
    process or in worker processes, print none of it and write no MUJOCO_LOG.TXT into the working directory."""
    r, cwd = worker_script
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[1:] == ["made"], r.stdout  # nothing printed after the CartPole line
    assert "MuJoCo" not in r.stderr and "settotalmass" not in r.stderr, r.stderr
    assert not (cwd / "MUJOCO_LOG.TXT").exists()


def test_a_non_mujoco_env_in_worker_processes_does_not_import_mujoco(worker_script) -> None:
    """CartPole copies in worker processes (gymnasium also makes a worker's block in this process, for the spaces)
    leave MuJoCo unimported: an env that does not need it neither pays for its import nor fails where MUJOCO_GL
    names a rendering backend the machine lacks. The worker module is added to the forkserver's preload list, and
    the modules a user's script put there stay."""
    r, _ = worker_script
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "False ['__main__', 'colorsys', 'flipes.rl.workers']", (
        r.stdout + r.stderr[-3000:]
    )


def test_mujoco_warnings_inside_the_block_are_warned_once_and_the_handler_put_back() -> None:
    """Each distinct MuJoCo warning given inside ``mujoco_warnings_once`` is one MujocoWarning when the block ends
    (none with ``report=False``), and the handler installed before the block is installed again after it."""
    import mujoco

    from flipes.rl.mujoco_log import MujocoWarning, mujoco_warnings_once

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><body><geom size='1'/><joint/></body></worldbody></mujoco>")

    def unstable_steps(copies: int) -> None:  # each fresh MjData warns once about its NaN position
        for _ in range(copies):
            data = mujoco.MjData(model)
            data.qpos[0] = float("nan")
            mujoco.mj_step(model, data)

    before: list[str] = []
    mujoco.set_mju_user_warning(before.append)
    try:
        with pytest.warns(MujocoWarning) as caught, mujoco_warnings_once() as seen:
            unstable_steps(3)
        assert len(seen) == 1 and len(caught) == 1 and str(caught[0].message).startswith("MuJoCo: Nan, Inf or huge value in QPOS")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with mujoco_warnings_once(report=False) as dropped:
                unstable_steps(2)
        assert len(dropped) == 1 and not before
        unstable_steps(1)  # after the blocks: the handler from before gets it
        assert len(before) == 1 and mujoco.get_mju_user_warning() == before.append
    finally:
        mujoco.set_mju_user_warning(None)


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "FrozenLake8x8-v1"])
def test_every_slippery_frozen_lake_on_envpool_draws_in_its_steps(env_id: str) -> None:
    """EnvPool's FrozenLake tasks are all slippery (no is_slippery option), the 8x8 map too: a resume names what draws
    in their steps, where fast-forwarding by resets alone cannot replay their episodes."""
    pytest.importorskip("envpool")
    assert EnvPoolVectorEnv(env_id, 1, threads=1).step_draws() == "its slippery ice"


def test_common_episodes_with_sticky_actions_make_a_pool_every_generation_and_without_one_in_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What README's Env engines says a generation of --common-episodes costs on EnvPool: Pong-v5 with sticky actions
    (repeat_action_probability 0.25, drawn in its steps) is reseeded, its pool made afresh, at every generation's
    reset; without sticky actions its one pool plays episode g of each stream at generation g."""
    pytest.importorskip("envpool")
    if "Pong-v5" not in engine.envpool_ids():
        pytest.skip("EnvPool's Atari ids are not installed")
    for sticky, pools in ((0.25, 2), (0.0, 1)):
        env = EnvPoolVectorEnv("Pong-v5", 2, threads=1, repeat_action_probability=sticky)
        made: list[tuple[int, ...]] = []
        make_pool = env._make_pool
        monkeypatch.setattr(env, "_make_pool", lambda seeds, tag=None, m=made, f=make_pool: m.append(seeds) or f(seeds, tag))
        for g in range(2):
            reset_episodes(env, 7, "population", g, common=2)
        assert len(made) == pools, sticky
        env.close()
