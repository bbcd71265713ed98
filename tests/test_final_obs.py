"""Each episode's final observation from a rollout (``run_episodes(final_obs=True)``, ``RolloutFitness(final_obs=True)``):
the behaviour characterization of novelty search (NS-ES, Conti et al. 2018), checked against per-env loops stepped by
hand on every engine, plain and pipelined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import flipes
from flipes.rl import MLPPolicy, RolloutFitness, make_vector_env, run_episodes

N, SEED = 16, 7


def weights(n: int = N) -> torch.Tensor:
    """A linear policy per env: the even ones balance the pole (to 500 steps, or a cut), the odd ones drop it early."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(n, 4, generator=g, dtype=torch.float64)
    w[::2] = torch.tensor([0.0, 0.3, 1.0, 1.0], dtype=torch.float64) + 0.05 * torch.randn(
        n // 2, 4, generator=g, dtype=torch.float64
    )
    return w


def act_rows(obs: Any, w: torch.Tensor) -> torch.Tensor:
    """CartPole actions of ``obs`` (rows of ``w``'s envs), each row from that row alone (no reduction over a batch, whose
    order could depend on its size): what a pipelined rollout's half-stale batches need, and a per-env loop repeats."""
    o = (obs if isinstance(obs, torch.Tensor) else torch.as_tensor(obs, device="cpu")).double()  # numpy: on the host
    return (o[:, 0] * w[:, 0] + o[:, 1] * w[:, 1] + o[:, 2] * w[:, 2] + o[:, 3] * w[:, 3] > 0).long()


def flipes_cartpole(n: int) -> gym.vector.VectorEnv:
    return make_vector_env("flipes/CartPole-v1", n, dtype=torch.float64, note=None)


def by_hand(make_one: Any, w: torch.Tensor, max_steps: int | None) -> tuple[torch.Tensor, list[int]]:
    """The reference: env ``i`` alone, made by ``make_one()``, reset with seed ``SEED + i`` (``run_episodes``' convention)
    and stepped until its episode ends (terminated, truncated, or ``max_steps`` steps); its last observation and
    length. ``make_one`` gives a 1-copy vector env (rows of one) or a single gymnasium env."""
    finals, lengths = [], []
    for i in range(len(w)):
        env = make_one()
        obs, _ = env.reset(seed=SEED + i)
        vector = isinstance(env, gym.vector.VectorEnv)
        t = 0
        while True:
            a = act_rows(obs if vector else np.asarray(obs)[None], w[i : i + 1])
            obs, _, terminated, truncated, _ = env.step(a if vector else int(a[0]))
            t += 1
            if bool(terminated) or bool(truncated) or t == max_steps:
                break
        env.close()
        finals.append(torch.as_tensor(np.asarray(obs)).reshape(-1))
        lengths.append(t)
    return torch.stack(finals), lengths


ALONE = {"flipes": lambda: flipes_cartpole(1), "gymnasium": lambda: gym.make("CartPole-v1")}  # by_hand's env of each name


@pytest.fixture(scope="module")
def stepped_alone() -> Callable[[str, int, int | None], tuple[torch.Tensor, list[int]]]:
    """``stepped_alone(name, n, max_steps)``: ``by_hand(ALONE[name], weights(n), max_steps)``, played once per
    arguments in this module (a pure function of them; several tests compare with the same reference). Read it,
    never write to it."""
    played: dict[tuple[str, int, int | None], tuple[torch.Tensor, list[int]]] = {}

    def stepped(name: str, n: int, max_steps: int | None) -> tuple[torch.Tensor, list[int]]:
        if (name, n, max_steps) not in played:
            played[name, n, max_steps] = by_hand(ALONE[name], weights(n), max_steps)
        return played[name, n, max_steps]

    return stepped


class AsyncCopies(gym.vector.VectorEnv):
    """EnvPool's semantics over flipes' CartPole (float64), one 1-copy env per row: ``send(actions, ids)`` / ``recv()``
    step the rows ``ids`` (a pipelined rollout's halves), an env whose episode ended is never stepped again (DISABLED
    autoreset: its row keeps its last observation) and sending it is a ValueError, as EnvPool refuses it."""

    def __init__(self, n: int) -> None:
        self.envs = [flipes_cartpole(1) for _ in range(n)]
        self.num_envs = n
        self.single_observation_space, self.single_action_space = (
            self.envs[0].single_observation_space,
            self.envs[0].single_action_space,
        )
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[torch.Tensor, dict]:
        self.obs = torch.cat([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)])
        self.done = np.zeros(self.num_envs, dtype=bool)
        return self.obs.clone(), {}

    def send(self, actions: np.ndarray, ids: np.ndarray) -> None:
        if self.done[ids].any():
            raise ValueError("send() got finished envs; reset them first")
        self.batch = ids, torch.as_tensor(actions)

    def recv(self) -> tuple[np.ndarray, ...]:
        ids, actions = self.batch
        out = [self.envs[i].step(actions[i : i + 1]) for i in ids]
        obs = torch.cat([o[0] for o in out])
        terminated, truncated = (np.array([bool(o[k]) for o in out]) for k in (2, 3))
        self.obs[ids] = obs
        self.done[ids] = terminated | truncated
        reward = np.array([float(o[1]) for o in out])
        return ids, obs.numpy(), reward, terminated, truncated


@pytest.mark.parametrize("max_steps", [None, 60])
@pytest.mark.parametrize("pipeline", [False, True])
def test_final_obs_are_each_episodes_last_observation_as_a_per_env_loop_steps_it(
    max_steps: int | None, pipeline: bool, stepped_alone
) -> None:
    """On flipes/CartPole-v1 (float64), ``run_episodes(final_obs=True)`` gives each episode's final observation exactly as
    a loop stepping each env alone until it ends: terminated (odd envs), truncated at the env's 500 steps, or cut at
    ``max_steps``; not the next episode's first (flipes' envs autoreset at the next step); pipelined (half batches
    through ``send``/``recv``) too. Its returns and lengths are those of the rollout without it, bit for bit."""
    w = weights()
    env = AsyncCopies(N) if pipeline else flipes_cartpole(N)
    act = lambda obs: act_rows(obs, w)  # noqa: E731
    ep = run_episodes(env, act, seed=SEED, max_steps=max_steps, pipeline=pipeline, final_obs=True)
    plain = run_episodes(env, act, seed=SEED, max_steps=max_steps, pipeline=pipeline)
    final, lengths = stepped_alone("flipes", N, max_steps)
    assert ep.lengths.tolist() == lengths
    assert {500 if max_steps is None else 60} < set(lengths) and min(lengths) < 60  # ends of every kind
    assert ep.final_obs.dtype == torch.float32 and torch.equal(ep.final_obs, final)
    assert plain.final_obs is None and torch.equal(plain.returns, ep.returns) and torch.equal(plain.lengths, ep.lengths)


@pytest.mark.parametrize("engine", ["sync", "same_step", "async"])
def test_final_obs_of_gymnasiums_envs_are_those_of_its_own_cartpole_stepped_alone(engine: str, stepped_alone) -> None:
    """gymnasium's CartPole-v1 in a ``SyncVectorEnv`` (NEXT_STEP autoreset: the ending step returns the final
    observation), one with SAME_STEP autoreset (the ending step returns the next episode's first observation, the final
    one in ``info["final_obs"]``) and in worker processes (``gymnasium-async:``, :class:`flipes.rl.WorkerVectorEnv`):
    each episode's final observation, cut at 60 steps or not, is exactly that of ``gymnasium.make("CartPole-v1")``
    stepped alone."""
    w = weights(8)
    if engine == "async":
        env = make_vector_env("gymnasium-async:CartPole-v1", 8, threads=2, note=None)
    else:
        mode = gym.vector.AutoresetMode.SAME_STEP if engine == "same_step" else gym.vector.AutoresetMode.NEXT_STEP
        env = gym.make_vec("CartPole-v1", 8, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})
    try:
        for max_steps in (None, 60):
            ep = run_episodes(env, lambda obs: act_rows(obs, w), seed=SEED, max_steps=max_steps, final_obs=True)
            final, lengths = stepped_alone("gymnasium", 8, max_steps)
            assert ep.lengths.tolist() == lengths and max(lengths) > min(lengths)
            assert torch.equal(ep.final_obs, final)
    finally:
        env.close()


class SameStepTorch(gym.vector.VectorEnv):
    """flipes' CartPole (float64) with SAME_STEP autoreset, all in torch: a step that ends an episode returns the next
    one's first observation, and the final one in ``info["final_obs"]``, a tensor of every row, the rows that ended in
    ``info["_final_obs"]``, a bool tensor (an own env's way; gymnasium's are numpy arrays)."""

    def __init__(self, n: int) -> None:
        self.env = flipes_cartpole(n)
        self.num_envs = n
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[torch.Tensor, dict]:
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        obs, reward, terminated, truncated, _ = self.env.step(actions)
        ended, info = terminated | truncated, {}
        if ended.any():
            info = {"final_obs": obs.clone(), "_final_obs": ended.clone()}
            fresh, _ = self.env.reset(options={"reset_mask": ended})
            obs = torch.where(ended[:, None], fresh, obs)
        return obs, reward, terminated, truncated, info


def test_final_obs_of_a_torch_same_step_env_come_from_its_tensor_info(stepped_alone) -> None:
    """A torch env of one's own with SAME_STEP autoreset whose ``info["final_obs"]`` and ``info["_final_obs"]`` are
    tensors: each episode's final observation, cut at 60 steps or not, is exactly that of flipes' CartPole stepped
    alone (not the next episode's first observation that the ending step returns)."""
    w = weights()
    env = SameStepTorch(N)
    for max_steps in (None, 60):
        ep = run_episodes(env, lambda obs: act_rows(obs, w), seed=SEED, max_steps=max_steps, final_obs=True)
        final, lengths = stepped_alone("flipes", N, max_steps)
        assert ep.lengths.tolist() == lengths and min(lengths) < 60
        assert torch.equal(ep.final_obs, final)


def test_final_obs_of_envpool_are_those_of_its_envs_stepped_alone_plain_and_pipelined() -> None:
    """EnvPool (DISABLED autoreset: a finished env is never stepped again and keeps its last observation): each
    episode's final observation, plain and pipelined, is exactly that of a 1-env pool of the env's seed stepped alone."""
    pytest.importorskip("envpool")
    from flipes.rl import EnvPoolVectorEnv

    w = weights(8)
    env = make_vector_env("envpool:CartPole-v1", 8, threads=2, note=None)
    final, lengths = by_hand(lambda: EnvPoolVectorEnv("CartPole-v1", 1, threads=1), w, 60)
    for pipeline in (False, True):
        ep = run_episodes(env, lambda obs: act_rows(obs, w), seed=SEED, max_steps=60, pipeline=pipeline, final_obs=True)
        assert ep.lengths.tolist() == lengths and max(lengths) > min(lengths)
        assert torch.equal(ep.final_obs, final)
    env.close()


def cartpole_policy() -> MLPPolicy:
    env = flipes_cartpole(1)
    torch.manual_seed(0)
    return MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[8])


def test_turning_final_obs_on_changes_no_fitness_timestep_or_trained_parameter() -> None:
    """Three generations of training on flipes/CartPole-v1 (float64, observation normalization on, 2 episodes per
    member, cut at 100 steps) with ``RolloutFitness(final_obs=True)`` and without: the same fitness, returns, timesteps,
    normalization statistics and parameters, bit for bit; ``last_final_obs`` is ``(popsize, episodes, 4)``, and None
    without it."""
    runs = []
    for final_obs in (False, True):
        policy = flipes.flipout(cartpole_policy())
        es = flipes.FlipES(policy, popsize=8, sigma=0.1, seed=3)
        fitness = RolloutFitness(flipes_cartpole(16), episodes=2, seed=5, max_steps=100, final_obs=final_obs)
        seen = []
        for _ in range(3):
            with es.population() as pop:
                f = fitness(policy, pop)
            seen.append((f, fitness.last_returns))
            es.tell(f)
            policy.obs_norm.update()
        params = [p.detach().clone() for p in policy.parameters()] + [policy.obs_norm.mean, policy.obs_norm.var]
        runs.append((seen, params, fitness.timesteps, fitness.last_final_obs))
    (seen0, params0, steps0, none), (seen1, params1, steps1, final) = runs
    assert none is None and final.shape == (8, 2, 4) and steps0 == steps1
    assert all(torch.equal(a, b) for x, y in zip(seen0, seen1, strict=True) for a, b in zip(x, y, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params0, params1, strict=True))


def test_last_final_obs_holds_member_m_episode_k_at_m_k_also_rolled_out_in_parts() -> None:
    """``last_final_obs[m, k]`` is the final observation of member m's episode k (the rollout's env m·K + k): that of a
    plain ``run_episodes`` of the same population's envs, and the same when the population is rolled out in parts of
    2 members (an env of 2 × K copies)."""
    policy = flipes.flipout(cartpole_policy())
    es = flipes.FlipES(policy, popsize=8, sigma=0.5, seed=3, groups=2)
    whole = RolloutFitness(flipes_cartpole(8 * 3), episodes=3, seed=5, final_obs=True)
    parts = RolloutFitness(flipes_cartpole(2 * 3), episodes=3, seed=5, final_obs=True)
    with es.population() as pop:
        f, g = whole(policy, pop), parts(policy, pop)
        env = flipes_cartpole(8 * 3)
        from flipes.rl.rollout import reset_episodes

        obs = reset_episodes(env, 5, "population", pop.generation)
        ep = run_episodes(env, lambda o: policy(o.view(8, 3, 4)).flatten(), obs=obs, final_obs=True)
    assert torch.equal(f, g) and len(set(whole.last_final_obs[:, :, 0].flatten().tolist())) == 24
    assert torch.equal(whole.last_final_obs, ep.final_obs.view(8, 3, 4))
    assert torch.equal(parts.last_final_obs, whole.last_final_obs)


def test_every_tensor_final_obs_makes_is_on_the_envs_device() -> None:
    """Under the meta default device, ``final_obs`` of flipes' env (device "cpu") and of gymnasium's SAME_STEP env (numpy
    from ``info["final_obs"]``) is on the CPU: a tensor made without ``device=`` would be a meta tensor and fail here,
    as it would meet a GPU env's tensors on the host."""
    w = weights(8)
    envs = [
        flipes_cartpole(8),
        gym.make_vec(
            "CartPole-v1", 8, vectorization_mode="sync", vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        ),
    ]
    torch.set_default_device("meta")
    try:
        assert torch.empty(1).is_meta  # the check is in force
        for env in envs:
            ep = run_episodes(env, lambda obs: act_rows(obs, w), seed=SEED, max_steps=60, final_obs=True)
            assert min(ep.lengths.tolist()) < 60  # some episodes ended before the cut
            assert ep.final_obs.device.type == "cpu" and ep.final_obs.shape == (8, 4)
    finally:
        torch.set_default_device(None)
