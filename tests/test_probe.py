"""Side information gathered along a rollout by a :class:`flipes.rl.Probe` (``run_episodes(probe=)``,
``RolloutFitness(probe=)``): a behaviour characterization for novelty search taken from the very episodes that give the
returns, checked against each env, and each member's explicit weights, stepped alone by hand."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from reference import member_parameters
from test_mpi import shared_two_rank_scripts
from torch import Tensor
from torch.func import functional_call

import flipes
from flipes.dist import Comm
from flipes.rl import MLPPolicy, Probe, RolloutFitness, episode_seed, make_vector_env, run_episodes

SEED = 7


class MeanObs(Probe):
    """Each episode's mean observation over the observations its steps returned, its count of steps and its sum of
    actions (CartPole's pushes to the right), in float64."""

    def reset(self, env: Any, obs: Tensor) -> None:
        self.sum = torch.zeros_like(obs, dtype=torch.float64)  # CartPole's observations are float32: sums of many
        self.steps = torch.zeros(len(obs), dtype=torch.int64, device=obs.device)
        self.pushes = torch.zeros(len(obs), dtype=torch.int64, device=obs.device)

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        self.sum += obs * counted[:, None]
        self.steps += counted
        self.pushes += actions * counted

    def result(self) -> Tensor:
        counts = torch.stack((self.steps, self.pushes), 1).to(self.sum.dtype)
        return torch.cat((self.sum / self.steps[:, None], counts), 1)


def cartpole(n: int, device: torch.device | str = "cpu") -> Any:
    return make_vector_env("flipes/CartPole-v1", n, device, dtype=torch.float64, note=None)


def mean_alone(act: Any, seed: int, max_steps: int | None, device: torch.device | str = "cpu") -> Tensor:
    """The reference: one env alone on ``device``, reset with ``seed``, stepped by ``act`` until its episode ends
    (terminated, truncated, or ``max_steps`` steps); the mean of the observations its steps returned, its length and its
    sum of actions, on the CPU."""
    env = cartpole(1, device)
    obs, _ = env.reset(seed=seed)
    seen, pushes = [], 0
    while True:
        action = act(obs)
        pushes += int(action)
        obs, _, terminated, truncated, _ = env.step(action)
        seen.append(obs[0])
        if bool(terminated) or bool(truncated) or len(seen) == max_steps:
            counts = torch.tensor([float(len(seen)), float(pushes)], dtype=torch.float64)
            return torch.cat((torch.stack(seen).double().mean(0).cpu(), counts))


@pytest.mark.parametrize("max_steps", [None, 40])
def test_probe_gathers_each_envs_episode_as_that_env_run_alone(max_steps: int | None, device: torch.device) -> None:
    """``run_episodes(probe=MeanObs())`` on flipes/CartPole-v1 (float64, 12 linear policies, half of which drop the pole
    early) gives each env's mean observation over its own episode, its length and its actions' sum, equal (to rounding
    of the sums' order, 1e-12) to the env stepped alone; the returns and lengths are those of the rollout without a
    probe. On a GPU the rollout steps on up to 16 steps past the last episode's end: counted for nothing."""
    w = torch.randn(12, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w[::2] = torch.tensor([0.0, 0.3, 1.0, 1.0], dtype=torch.float64)  # these balance the pole
    w = w.to(device)

    def act(obs: Tensor, rows: slice = slice(None)) -> Tensor:
        return ((obs * w[rows]).sum(1) > 0).long()

    ep = run_episodes(cartpole(12, device), act, seed=SEED, max_steps=max_steps, probe=MeanObs())
    plain = run_episodes(cartpole(12, device), act, seed=SEED, max_steps=max_steps)
    assert torch.equal(ep.returns, plain.returns) and torch.equal(ep.lengths, plain.lengths) and plain.probe is None
    alone = [mean_alone(lambda o, i=i: act(o, slice(i, i + 1)), SEED + i, max_steps, device) for i in range(12)]
    assert ep.probe.device == ep.returns.device
    torch.testing.assert_close(ep.probe.cpu(), torch.stack(alone), rtol=0, atol=1e-12)
    assert torch.equal(ep.probe[:, 4], ep.lengths.double()) and len(set(ep.lengths.tolist())) > 2


class TopSpeed(Probe):
    """Each episode's top cart speed, read from the env's state (``env.unwrapped.state``), which CartPole's observations
    leave out under ``hide_velocities``."""

    def reset(self, env: Any, obs: Tensor) -> None:
        self.env, self.top = env.unwrapped, torch.zeros(len(obs), dtype=torch.float64, device=obs.device)

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        self.top = torch.where(counted, self.top.maximum(self.env.state[:, 1].abs()), self.top)

    def result(self) -> Tensor:
        return self.top


def test_a_probe_reads_state_the_observations_leave_out_as_each_env_alone() -> None:
    """On flipes/CartPole-v1 with ``hide_velocities`` (observations x and θ), a probe reading ``env.unwrapped.state``
    gives each episode's top cart speed exactly as its env stepped alone (float64, 40 steps at most): episodes of other
    lengths, whose envs step on (auto-reset) after they end, count nothing after it."""
    w = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def env_of(n: int) -> Any:
        return make_vector_env("flipes/CartPole-v1", n, dtype=torch.float64, note=None, hide_velocities=True)

    ep = run_episodes(env_of(6), lambda o: ((o * w).sum(1) > 0).long(), seed=SEED, max_steps=40, probe=TopSpeed())
    assert len(set(ep.lengths.tolist())) > 1
    for i in range(6):
        one = env_of(1)
        obs, _ = one.reset(seed=SEED + i)
        top = 0.0
        for _ in range(40):
            obs, _, terminated, truncated, _ = one.step(((obs * w[i]).sum(1) > 0).long())
            top = max(top, abs(float(one.unwrapped.state[0, 1])))
            if bool(terminated) or bool(truncated):
                break
        assert ep.probe[i].item() == top, (i, ep.probe[i].item(), top)


def test_last_probe_of_member_m_episode_k_is_its_explicit_weights_alone_also_in_parts() -> None:
    """``RolloutFitness(probe=)``'s ``last_probe[m, k]`` is what a plain MLPPolicy (float64) with member m's explicit
    weights gives in one env alone, reset with episode k's seed of member m (``episode_seed(seed, generation,
    "population") + m·K + k``), to 1e-12; rolled out in parts of 2 members it is the same bit for bit, and the fitness
    is that of a rollout without a probe, bit for bit."""
    torch.manual_seed(0)
    n, k, seed = 8, 2, 5
    env = cartpole(n * k)
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[8]).double())
    plain = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[8]).double()
    plain.load_state_dict(policy.state_dict())
    es = flipes.FlipES(policy, popsize=n, sigma=0.5, seed=3, groups=2)
    whole = RolloutFitness(env, episodes=k, seed=seed, probe=MeanObs())
    parts = RolloutFitness(cartpole(2 * k), episodes=k, seed=seed, probe=MeanObs())
    without = RolloutFitness(cartpole(n * k), episodes=k, seed=seed)
    with es.population() as pop:
        f, g, h = whole(policy, pop), parts(policy, pop), without(policy, pop)
        members = member_parameters(es, policy)
        start = episode_seed(seed, pop.generation, "population")
    assert torch.equal(f, g) and torch.equal(f, h) and without.last_probe is None
    assert whole.last_probe.shape == (n, k, 6) and torch.equal(parts.last_probe, whole.last_probe)
    for m, params in enumerate(members):
        for e in range(k):
            alone = mean_alone(lambda o, p=params: functional_call(plain, p, (o,)), start + m * k + e, None)
            torch.testing.assert_close(whole.last_probe[m, e], alone, rtol=0, atol=1e-12)
    assert len(set(whole.last_probe[:, :, 4].flatten().tolist())) > 2  # members whose episodes differ


class ReusedSteps(Probe):
    """Each episode's count of steps, in one buffer the probe zeroes in place at each reset and returns as it is."""

    buffer: Tensor | None = None

    def reset(self, env: Any, obs: Tensor) -> None:
        if self.buffer is None or len(self.buffer) != len(obs):
            self.buffer = torch.zeros(len(obs), dtype=torch.int64, device=obs.device)
        self.buffer.zero_()

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        self.buffer += counted

    def result(self) -> Tensor:
        return self.buffer


def test_a_probe_reusing_its_tensor_keeps_each_parts_and_each_calls_rows() -> None:
    """A probe whose ``result()`` is a buffer it zeroes at the next reset gives ``last_probe`` rows that stay its own:
    rolled out in parts of 2 members each member's count of steps (CartPole's return, 1 per step), and a call's
    ``last_probe`` kept as it was after the next call (8 members, 4 parts, 2 generations)."""
    torch.manual_seed(0)
    env = cartpole(2)
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[8]).double())
    es = flipes.FlipES(policy, popsize=8, sigma=0.5, seed=3, groups=2)
    rollout = RolloutFitness(env, seed=5, probe=ReusedSteps())
    kept = []
    for _ in range(2):
        with es.population() as pop:
            rollout(policy, pop)
        assert torch.equal(rollout.last_probe[:, 0].double(), rollout.last_returns)
        kept.append((rollout.last_probe, rollout.last_probe.clone()))
        es.tell(rollout.last_returns)
        policy.obs_norm.update()
    assert len(set(kept[0][1].flatten().tolist())) > 2  # the members' episodes differ: parts of other lengths
    assert all(torch.equal(held, copy) for held, copy in kept)


def as_tensor(x: Any) -> Tensor:
    """A copy of an env's output (an engine may write its next step into the same memory), in float64 rows."""
    x = x.clone() if isinstance(x, Tensor) else torch.as_tensor(np.array(x))
    return x.double().reshape(len(x), -1)


class Recorded(gym.vector.VectorWrapper):
    """The latest rollout of the env as the env saw it: its reset's observations, then each step's actions as it got
    them, rewards, ends, observations and ``info``."""

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> Any:
        obs, info = self.env.reset(seed=seed, options=options)
        self.first, self.steps = as_tensor(obs), []
        return obs, info

    def step(self, actions: Any) -> Any:
        obs, reward, terminated, truncated, info = out = self.env.step(actions)
        ended = as_tensor(terminated).bool().flatten() | as_tensor(truncated).bool().flatten()
        self.steps.append((as_tensor(actions), as_tensor(reward).flatten(), ended, as_tensor(obs), info))
        return out


class Seen(Probe):
    """Each episode's sum of rewards, count of steps, sum of actions and final observation (under SAME_STEP autoreset
    ``info["final_obs"]`` at the step that ends it, as :meth:`Probe.step` says), in float64."""

    def reset(self, env: Any, obs: Tensor) -> None:
        self.sums = torch.zeros(len(obs), 2, dtype=torch.float64)
        self.actions: Tensor | None = None
        self.last = obs.double().clone()

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        self.sums += torch.stack((reward.double(), torch.ones_like(self.sums[:, 0])), 1) * counted[:, None]
        acts = actions.double().reshape(len(actions), -1) * counted[:, None]
        self.actions = acts if self.actions is None else self.actions + acts
        self.last = torch.where(counted[:, None], obs.double(), self.last)
        for i in np.flatnonzero(info.get("_final_obs", [])):
            if counted[i]:
                self.last[i] = torch.as_tensor(info["final_obs"][i], dtype=torch.float64)

    def result(self) -> Tensor:
        return torch.cat((self.sums, self.actions, self.last), 1)


def recorded_reference(env: Recorded) -> Tensor:
    """:class:`Seen`'s result from the steps ``env`` recorded, each env's episode read off alone: its steps up to the
    first that ended it (rewards, count, the actions the env got), and that step's observation, or the final one that
    a SAME_STEP autoreset env put in ``info``."""
    rows = []
    for i in range(env.num_envs):
        ret, count, acts, last = 0.0, 0, torch.zeros_like(env.steps[0][0][i]), env.first[i]
        for actions, reward, ended, obs, info in env.steps:
            ret, count, acts, last = ret + float(reward[i]), count + 1, acts + actions[i], obs[i]
            if ended[i]:
                if "_final_obs" in info and info["_final_obs"][i]:
                    last = torch.as_tensor(info["final_obs"][i], dtype=torch.float64)
                break
        rows.append(torch.cat((torch.tensor([ret, count], dtype=torch.float64), acts, last)))
    return torch.stack(rows)


def gymnasium_env(env_id: str, n: int, mode: gym.vector.AutoresetMode) -> gym.vector.VectorEnv:
    return gym.make_vec(env_id, n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})


@pytest.mark.parametrize(
    ("make", "action_noise", "max_steps"),
    [
        (lambda n: cartpole(n), 0.0, None),
        (lambda n: gymnasium_env("CartPole-v1", n, gym.vector.AutoresetMode.SAME_STEP), 0.0, None),
        (lambda n: make_vector_env("flipes/Pendulum-v1", n, dtype=torch.float64, note=None), 0.5, 30),
        (lambda n: gymnasium_env("Pendulum-v1", n, gym.vector.AutoresetMode.NEXT_STEP), 0.5, 30),
    ],
    ids=["flipes-cartpole", "gymnasium-cartpole-same-step", "flipes-pendulum-noise", "gymnasium-pendulum-noise"],
)
def test_a_probe_sees_the_actions_rewards_and_last_obs_each_env_saw(make: Any, action_noise: float, max_steps: Any) -> None:
    """``RolloutFitness(probe=, final_obs=True)`` on flipes' torch envs and gymnasium's numpy ones (through
    NumpyToTorch; CartPole under SAME_STEP autoreset, Pendulum with action noise cut at 30 steps): each env's sums of
    its counted rewards, steps and actions and its last counted observation equal, bit for bit, those of the steps the
    env itself recorded up to its episode's end (the noisy actions it got, a SAME_STEP end's ``info["final_obs"]``); the
    reward sums' mean is ``last_returns`` and the last observations ``last_final_obs``, bit for bit."""
    torch.manual_seed(0)
    n, k = 4, 2
    env = Recorded(make(n * k))
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[8]))
    es = flipes.FlipES(policy, popsize=n, sigma=0.5, seed=3)
    rollout = RolloutFitness(
        env, episodes=k, seed=5, max_steps=max_steps, action_noise=action_noise, final_obs=True, probe=Seen()
    )
    with es.population() as pop:
        rollout(policy, pop)
    seen = rollout.last_probe.flatten(0, 1)
    assert torch.equal(seen, recorded_reference(env))
    assert torch.equal(rollout.last_probe[:, :, 0].mean(1), rollout.last_returns)
    assert torch.equal(rollout.last_probe[:, :, -env.first.shape[1] :], rollout.last_final_obs.double())
    if max_steps is None:  # CartPole: episodes of other lengths, whose envs step on after they end
        assert len(set(seen[:, 1].tolist())) > 1


def test_probe_mistakes_are_named() -> None:
    """A probe class given for an instance, an object that is no Probe, a pipelined rollout with a probe and a result of
    another number of rows are each refused with an error naming the fix."""
    env = cartpole(4)
    with pytest.raises(TypeError, match=r"probe=MeanObs\(\)"):
        RolloutFitness(env, probe=MeanObs)
    with pytest.raises(TypeError, match=r"subclass flipes\.rl\.Probe"):
        run_episodes(env, lambda o: torch.zeros(4, dtype=torch.long), seed=0, probe=lambda *a: None)
    with pytest.raises(ValueError, match="pipeline"):
        RolloutFitness(env, probe=MeanObs(), pipeline=True)

    class Short(MeanObs):
        def result(self) -> Tensor:
            return super().result()[:2]

    with pytest.raises(ValueError, match=r"Short.result\(\) returned shape \(2, 6\).*4 envs"):
        run_episodes(env, lambda o: torch.zeros(4, dtype=torch.long), seed=0, max_steps=3, probe=Short())


def nsr_loop(comm: Comm | None, per_pass: int) -> dict[str, Any]:
    """Two generations of an NSR-ES-like loop on flipes/CartPole-v1 (8 members in 4 groups, 2 episodes each, rolled out
    ``per_pass`` members at a time): every rank gathers the returns and the probe's results, combines them into one
    fitness of the whole population (the ranks of the return plus those of the mean cart position) and tells its own
    members' share. Returns what was gathered and the final parameters."""
    torch.manual_seed(0)
    env = cartpole(per_pass * 2)
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[8]).double())
    es = flipes.FlipES(policy, popsize=8, sigma=0.5, seed=3, groups=4, comm=comm, comm_mode="seeds")
    rollout = RolloutFitness(env, episodes=2, seed=5, probe=MeanObs())
    seen = []
    for _ in range(2):
        with es.population() as pop:
            reward = es.comm.allgather_tensor(rollout(policy, pop))
        probed = es.comm.allgather_tensor(rollout.last_probe)
        combined = flipes.shaping.centered_ranks(reward) + flipes.shaping.centered_ranks(probed[:, :, 0].mean(1))
        es.tell(combined[es.members.start : es.members.stop])
        policy.obs_norm.update(comm=es.comm)
        seen += [reward, probed]
    return {"seen": seen, "params": [p.detach().clone() for p in policy.parameters()]}


def test_two_ranks_gather_the_probe_in_member_order_and_end_on_one_processs_parameters(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Under ``mpiexec -n 2`` (each rank 2 groups, rolled out 2 members at a time), the returns and ``last_probe`` rows
    every rank gathers with ``es.comm.allgather_tensor`` equal one process's in one pass, and a fitness combined from
    them over the whole population ends on one process's parameters, bit for bit (the 2-rank loop: test_mpi.py's
    PROBE_LOOP, in its shared 2-rank job)."""
    two_ranks = shared_two_rank_scripts(tmp_path_factory) / "probe"
    one = nsr_loop(None, 8)
    assert one["seen"][1].shape == (8, 2, 6)
    for rank in (0, 1):
        two = torch.load(two_ranks / f"rank{rank}.pt")
        for a, b in zip([*one["seen"], *one["params"]], [*two["seen"], *two["params"]], strict=True):
            assert torch.equal(a, b)
