"""envs/: flipes' torch envs against gymnasium's own, transition for transition."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv as GymCartPoleVectorEnv
from gymnasium.utils.env_checker import check_env

import envs
from envs import seeding

ROOT = Path(__file__).resolve().parents[1]
PI = math.pi
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@dataclass
class Case:
    gym_id: str
    wide_low: list[float]  # states drawn from here cover the state space, terminal regions included
    wide_high: list[float]
    action_low: float = 0.0  # Box actions are drawn from here, beyond the bounds to exercise clipping
    action_high: float = 0.0
    min_terminations: int = 0

    @property
    def flipes_id(self) -> str:
        return f"flipes/{self.gym_id}"


CASES = [
    Case("CartPole-v1", [-2.4, -2.0, -0.21, -2.0], [2.4, 2.0, 0.21, 2.0], min_terminations=100),
    Case("Acrobot-v1", [-PI, -PI, -4 * PI, -9 * PI], [PI, PI, 4 * PI, 9 * PI], min_terminations=100),
    Case("Pendulum-v1", [-2 * PI, -8.0], [2 * PI, 8.0], action_low=-3.0, action_high=3.0),
    Case("MountainCarContinuous-v0", [-1.2, -0.07], [0.6, 0.07], action_low=-1.5, action_high=1.5, min_terminations=40),
]


def random_actions(env: gym.vector.VectorEnv, case: Case, gen: torch.Generator) -> torch.Tensor:
    n = env.num_envs
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (n,), generator=gen)
    return case.action_low + (case.action_high - case.action_low) * torch.rand(n, *space.shape, generator=gen)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_every_transition_matches_gymnasium(case: Case, device: torch.device) -> None:
    """From states drawn over the whole state space (terminal regions included), a quarter of them a few steps short
    of the time limit, every transition of a non-resetting env equals gymnasium's own env (TimeLimit included) stepped
    from the same state, step count and action: observations and rewards within 1e-5 (float32 observations),
    terminated and truncated exactly. At least 1000 transitions, the case's minimum of terminations, 40 truncations
    and 50 autoreset steps in between."""
    n, steps = 512, 8
    env = gym.make_vec(case.flipes_id, num_envs=n, device=device)
    limit = env.max_episode_steps
    ref = gym.make(case.gym_id, disable_env_checker=True)  # TimeLimit(OrderEnforcing(env)): truncation too
    ref.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    env.reset(seed=0)
    low, high = torch.tensor(case.wide_low, dtype=torch.float64), torch.tensor(case.wide_high, dtype=torch.float64)
    env.state = (low + (high - low) * torch.rand(n, len(low), generator=gen, dtype=torch.float64)).to(device)
    near_limit = torch.arange(n) % 4 == 0  # these reach the time limit within the rollout
    env.elapsed = torch.where(near_limit, limit - 1 - torch.arange(n) % steps, torch.zeros(n, dtype=torch.int64)).to(device)

    ours: dict[str, list] = {"obs": [], "reward": [], "terminated": [], "truncated": []}
    theirs: dict[str, list] = {k: [] for k in ours}
    our_states: list[torch.Tensor] = []  # the full state too (Acrobot's angles wrapped to [-π, π] as gymnasium's)
    their_states: list[np.ndarray] = []
    reset_steps = 0
    ended = torch.zeros(n, dtype=torch.bool)
    for _ in range(steps):
        state, elapsed, actions = env.state.clone().cpu(), env.elapsed.clone().cpu(), random_actions(env, case, gen)
        obs, reward, terminated, truncated = (t.cpu() for t in env.step(actions.to(device))[:4])
        for k, v in zip(ours, (obs, reward, terminated, truncated), strict=True):
            ours[k].append(v[~ended])
        our_states.append(env.state.cpu()[~ended])
        for i in torch.nonzero(~ended).flatten().tolist():
            ref.unwrapped.state = state[i].numpy().copy()
            ref.unwrapped.steps_beyond_terminated = None  # CartPole's own end-of-episode bookkeeping
            ref._elapsed_steps = int(elapsed[i])
            result = ref.step(actions[i].numpy() if actions.dim() > 1 else int(actions[i]))
            for k, v in zip(theirs, result[:4], strict=True):
                theirs[k].append(v)
            their_states.append(np.asarray(ref.unwrapped.state, dtype=np.float64))
        reset_steps += int(ended.sum())
        ended = terminated | truncated

    ours_ = {k: torch.cat(v).numpy() for k, v in ours.items()}
    theirs_ = {k: np.array(v) for k, v in theirs.items()}
    assert len(theirs_["reward"]) >= 1000, "too few transitions compared"
    assert ours_["obs"].dtype == theirs_["obs"].dtype == np.float32
    np.testing.assert_allclose(ours_["obs"], theirs_["obs"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_["reward"], theirs_["reward"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours_["terminated"], theirs_["terminated"])
    np.testing.assert_array_equal(ours_["truncated"], theirs_["truncated"])
    np.testing.assert_allclose(torch.cat(our_states).double().numpy(), np.stack(their_states), rtol=1e-5, atol=1e-5)
    assert theirs_["terminated"].sum() >= case.min_terminations
    assert theirs_["truncated"].sum() >= 40
    assert reset_steps >= 50  # autoresets happened in between, and the envs carried on from them


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_spaces_are_gymnasiums(case: Case) -> None:
    """The vector env's and the single env's observation and action spaces equal gymnasium's own env's: shape, dtype
    and every bound."""
    ref = gym.make(case.gym_id)
    vec, single = gym.make_vec(case.flipes_id, num_envs=2), gym.make(case.flipes_id)
    for ours in (vec.single_observation_space, single.observation_space):
        assert ours == ref.observation_space, (ours, ref.observation_space)
    for ours in (vec.single_action_space, single.action_space):
        assert ours == ref.action_space, (ours, ref.action_space)


def test_every_id_registers_gymnasiums_time_limit_and_reward_threshold() -> None:
    """Each flipes/ id, MuJoCo ones included, registers the ``max_episode_steps`` and ``reward_threshold`` of
    gymnasium's id of the same name (what ``flipes train`` stops at), and its vector env truncates at that limit."""
    for flipes_id in envs._SPECS:
        ours, theirs = gym.spec(flipes_id), gym.spec(flipes_id.removeprefix("flipes/"))
        assert (ours.max_episode_steps, ours.reward_threshold) == (theirs.max_episode_steps, theirs.reward_threshold), flipes_id
    for case in CASES:
        assert gym.make_vec(case.flipes_id, num_envs=1).max_episode_steps == gym.spec(case.gym_id).max_episode_steps


def test_cartpole_terminates_strictly_beyond_its_thresholds_as_gymnasium() -> None:
    """A cart exactly at x = ±2.4 or a pole exactly at ±12°, at rest (the Euler step keeps x and θ where they are), is
    not terminated, and one float64 beyond is, as gymnasium's strict comparisons decide."""
    x, th = envs.cartpole.X_THRESHOLD, envs.cartpole.THETA_THRESHOLD
    on = [[x, 0, 0, 0], [-x, 0, 0, 0], [0, 0, th, 0], [0, 0, -th, 0]]
    beyond = [[np.nextafter(v, math.copysign(math.inf, v)) if v else 0.0 for v in s] for s in on]
    states = np.array(on + beyond, dtype=np.float64)
    env = envs.CartPoleVectorEnv(num_envs=len(states))
    env.reset(seed=0)
    env.state = torch.from_numpy(states)
    terminated = env.step(torch.ones(len(states), dtype=torch.int64))[2].tolist()
    ref = gym.make("CartPole-v1").unwrapped
    ref.reset(seed=0)
    theirs = []
    for s in states:
        ref.state, ref.steps_beyond_terminated = s.copy(), None
        theirs.append(ref.step(1)[2])
    assert terminated == theirs == [False] * 4 + [True] * 4


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="NumPy 1 promotes gymnasium's step to float64")
def test_mountain_car_reaches_the_goal_at_gymnasiums_float32_threshold() -> None:
    """gymnasium (NumPy >= 2) steps MountainCarContinuous in float32 and compares the float32 position with the goal
    0.45 in float32, so a car landing on float32(0.45) = 0.449999988 reaches it; from states that land on float32(0.45)
    and on its two neighbours, terminations and rewards equal gymnasium's: the goal and 100 on the first two."""
    p0 = np.float32(0.44)
    push = 0.0025 * math.cos(3 * float(p0))  # force 0: the velocity changes by -0.0025 cos(3 p0)
    goal32 = np.float32(0.45)
    targets = [goal32, np.nextafter(goal32, np.float32(1)), np.nextafter(goal32, np.float32(0))]
    starts = [np.array([p0, np.float32(float(t) - float(p0) + push)], dtype=np.float32) for t in targets]
    ref = gym.make("MountainCarContinuous-v0").unwrapped
    ref.reset(seed=0)
    theirs, landed = [], []
    for s in starts:
        ref.state = s.copy()
        _, reward, terminated, _, _ = ref.step(np.zeros(1, dtype=np.float32))
        theirs.append((terminated, reward))
        landed.append(ref.state[0])
    assert landed == targets  # the states land where meant
    env = envs.MountainCarContinuousVectorEnv(num_envs=len(starts))
    env.reset(seed=0)
    env.state = torch.from_numpy(np.stack(starts)).double()
    _, reward, terminated, _, _ = env.step(torch.zeros(len(starts), 1))
    assert list(zip(terminated.tolist(), reward.tolist(), strict=True)) == theirs == [(True, 100.0), (True, 100.0), (False, 0.0)]


def test_cartpole_sutton_barto_reward_matches_gymnasium() -> None:
    """``sutton_barto_reward=True``: reward 0 per step and -1 on the step that terminates, as gymnasium's."""
    states = np.array([[0.0, 0.0, 0.2, 1.0], [0.0, 0.0, 0.0, 0.0], [2.39, 1.0, 0.0, 0.0]])
    env = gym.make_vec("flipes/CartPole-v1", num_envs=3, sutton_barto_reward=True)
    env.reset(seed=0)
    env.state = torch.tensor(states)
    _, reward, terminated, _, _ = env.step(torch.tensor([1, 0, 1]))
    ref = gym.make("CartPole-v1", sutton_barto_reward=True, disable_env_checker=True)
    ref.reset(seed=0)
    expect = []
    for state, action in zip(states, (1, 0, 1), strict=True):
        ref.unwrapped.state, ref.unwrapped.steps_beyond_terminated = state.copy(), None
        expect.append(ref.step(action)[1:3])
    assert [(r, t) for r, t in zip(reward.tolist(), terminated.tolist(), strict=True)] == expect
    assert terminated.tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("gym_id", "kwargs", "states", "actions"),
    [
        ("Pendulum-v1", {"g": 3.0}, [[0.5, 0.0], [2.0, -1.0], [-1.0, 7.9]], [[1.0], [-2.5], [0.3]]),
        # the car reaches the flag at 0.45 slower and faster than the goal velocity of 0.02
        ("MountainCarContinuous-v0", {"goal_velocity": 0.02}, [[0.44, 0.015], [0.44, 0.03], [0.0, 0.0]], [[0.0], [0.0], [1.0]]),
    ],
)
def test_make_vec_options_of_the_env_give_gymnasiums_transitions_with_the_same_options(
    gym_id: str, kwargs: dict, states: list, actions: list
) -> None:
    """An env's own option passed to ``make_vec`` (Pendulum's gravity ``g``, MountainCarContinuous's ``goal_velocity``)
    changes the transition as the same option does in gymnasium's env: from each state and action, state, observation
    and reward within 1e-5 and ``terminated`` exactly, and different from the defaults' transition."""
    env = gym.make_vec(f"flipes/{gym_id}", num_envs=len(states), **kwargs)
    default = gym.make_vec(f"flipes/{gym_id}", num_envs=len(states))
    results = []
    for e in (env, default):
        e.reset(seed=0)
        e.state = torch.tensor(states, dtype=torch.float64)
        obs, reward, terminated = e.step(torch.tensor(actions))[:3]
        results.append((e.state.clone(), obs, reward, terminated))
    ref = gym.make(gym_id, disable_env_checker=True, **kwargs)
    ref.reset(seed=0)
    for i, (state, action) in enumerate(zip(states, actions, strict=True)):
        ref.unwrapped.state = np.array(state)
        obs, reward, terminated = ref.step(np.array(action, dtype=np.float32))[:3]
        ours_state, ours_obs, ours_reward, ours_terminated = (t[i] for t in results[0])
        np.testing.assert_allclose(ours_state.numpy(), np.asarray(ref.unwrapped.state, dtype=np.float64), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours_obs.numpy(), obs, rtol=1e-5, atol=1e-5)
        assert float(ours_reward) == pytest.approx(float(reward), rel=1e-5, abs=1e-5)
        assert bool(ours_terminated) == bool(terminated)
    ours, defaults = results
    assert not (torch.equal(ours[0], defaults[0]) and torch.equal(ours[2], defaults[2]) and torch.equal(ours[3], defaults[3]))


def test_autoreset_matches_gymnasium_cartpole_vector_env() -> None:
    """NEXT_STEP as gymnasium's own CartPoleVectorEnv does it: both step from our state each time."""
    n = 64
    env = envs.CartPoleVectorEnv(num_envs=n, max_episode_steps=30)
    ref = GymCartPoleVectorEnv(num_envs=n, max_episode_steps=30)
    env.reset(seed=1)
    ref.reset(seed=1)
    gen = torch.Generator().manual_seed(1)
    pending = torch.zeros(n, dtype=torch.bool)
    resets = 0
    for _ in range(100):
        ref.state = env.state.T.numpy().copy()
        ref.steps = env.elapsed.numpy().astype(np.int32)
        ref.prev_done = pending.numpy().copy()
        actions = torch.randint(0, 2, (n,), generator=gen)
        obs, reward, terminated, truncated, _ = env.step(actions)
        r_obs, r_reward, r_terminated, r_truncated, _ = ref.step(actions.numpy())
        np.testing.assert_array_equal(reward.numpy(), r_reward)
        np.testing.assert_array_equal(terminated.numpy(), r_terminated)
        np.testing.assert_array_equal(truncated.numpy(), r_truncated)
        np.testing.assert_array_equal(env.elapsed.numpy(), ref.steps)
        stepped = ~pending.numpy()  # reset envs drew different random states: only their range matches
        np.testing.assert_allclose(obs.numpy()[stepped], r_obs[stepped], rtol=1e-5, atol=1e-5)
        assert (obs[pending].abs() <= 0.05).all() and (reward[pending] == 0).all()
        resets += int(pending.sum())
        pending = terminated | truncated
    assert resets >= 100


def test_next_step_autoreset_by_hand() -> None:
    """NEXT_STEP autoreset on three CartPoles: the step after a termination (env 0) or a truncation (env 1, limit 5)
    returns a fresh episode's first observation (within ±0.05), reward 0, neither flag and elapsed 0, and the env
    steps normally afterwards from a new state; the other envs step on undisturbed."""
    env = envs.CartPoleVectorEnv(num_envs=3, max_episode_steps=5)
    env.reset(seed=0)
    env.state = torch.tensor([[2.39, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    env.elapsed = torch.tensor([0, 3, 0])
    right = torch.ones(3, dtype=torch.int64)
    obs, reward, terminated, truncated, _ = env.step(right)  # env 0 leaves the track, env 1 hits the limit
    assert terminated.tolist() == [True, False, False] and truncated.tolist() == [False, False, False]
    assert reward.tolist() == [1.0, 1.0, 1.0] and obs[0, 0] > 2.4
    obs, reward, terminated, truncated, _ = env.step(right)
    assert truncated.tolist() == [False, True, False] and env.elapsed.tolist() == [0, 5, 2]
    assert (obs[0].abs() <= 0.05).all() and reward.tolist() == [0.0, 1.0, 1.0]  # env 0: a fresh episode
    assert not terminated[0] and not truncated[0]
    before = env.state[1].clone()
    obs, reward, terminated, truncated, _ = env.step(right)
    assert env.elapsed.tolist() == [1, 0, 3] and reward.tolist() == [1.0, 0.0, 1.0]
    assert not terminated[1] and not truncated[1] and not torch.equal(env.state[1], before)
    assert (obs[1].abs() <= 0.05).all()


def test_a_full_reset_starts_every_episode_afresh() -> None:
    """``reset()`` after some steps zeroes every env's step count: the episodes are truncated after exactly the time
    limit's steps from the reset, not from the start of the previous episodes; and a seeded reset puts env i at
    ``low + (high - low) · u`` with ``u = seeding.uniform(seed + i)`` (within 1e-15), gymnasium's initial range
    (±0.05)."""
    env = envs.CartPoleVectorEnv(num_envs=3, max_episode_steps=5)
    env.reset(seed=0)
    rest = torch.zeros(3, 4, dtype=torch.float64)
    for _ in range(3):
        env.state = rest  # far from termination
        env.step(torch.ones(3, dtype=torch.int64))
    env.reset(seed=10)
    assert env.elapsed.tolist() == [0, 0, 0]
    torch.testing.assert_close(env.state, -0.05 + 0.1 * seeding.uniform(torch.arange(10, 13), 4), rtol=0, atol=1e-15)
    truncated = []
    for _ in range(5):
        env.state = rest
        truncated.append(env.step(torch.ones(3, dtype=torch.int64))[3].all().item())
    assert truncated == [False] * 4 + [True]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_check_env_passes_on_the_single_env(case: Case) -> None:
    """gymnasium's check_env passes on the single (unwrapped) env, with its warnings about non-determinism, mismatched
    spaces or dtypes and shared memory raised as errors; only the warnings it gives gymnasium's own envs are ignored."""
    env = gym.make(case.flipes_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(not|different|non-deterministic|share).*")  # real failures warn too
        warnings.filterwarnings("ignore", message=".*(infinity|symmetric and normalized|unwrapped).*")  # as for gymnasium's own
        check_env(env.unwrapped)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_single_env_is_truncated_once_by_timelimit(case: Case) -> None:
    """gym.make's max_episode_steps is gymnasium's for the same id, and an env held at rest (far from termination) is
    truncated on exactly the last of those steps and never terminated."""
    env = gym.make(case.flipes_id)
    assert env.spec.max_episode_steps == gym.spec(case.gym_id).max_episode_steps
    env.reset(seed=0)
    rest = np.array([-0.5, 0.0]) if case.gym_id == "MountainCarContinuous-v0" else np.zeros(env.unwrapped.vector.state_dim)
    action = np.zeros(1, dtype=np.float32) if case.action_high else 1
    flags = []
    for _ in range(env.spec.max_episode_steps):
        env.unwrapped.state = rest  # far from any termination
        flags.append(env.step(action)[2:4])
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_reset_seeding_is_reproducible(case: Case) -> None:
    """Two vector envs reset with the same seed give identical observations, and so do their following unseeded resets
    (one stream); seed 8 gives other observations than the unseeded continuation, and than seed 9."""
    a, b = gym.make_vec(case.flipes_id, num_envs=64), gym.make_vec(case.flipes_id, num_envs=64)
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    assert torch.equal(obs_a, obs_b)
    assert torch.equal(a.reset()[0], b.reset()[0])  # unseeded resets continue the same stream
    assert not torch.equal(a.reset()[0], a.reset(seed=8)[0])
    assert not torch.equal(a.reset(seed=8)[0], b.reset(seed=9)[0])


def splitmix64_reference(seed: int, n: int) -> list[int]:
    """SplitMix64 as published (Steele, Lea & Flood 2014), in Python's unbounded ints."""
    out, mask = [], 2**64 - 1
    for _ in range(n):
        seed = (seed + 0x9E3779B97F4A7C15) & mask
        z = seed
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_seeding_is_splitmix64_and_uniform() -> None:
    """``seeding.splitmix64`` equals the published SplitMix64 bit for bit (negative and 2⁶³ - 1 seeds included); over
    100,000 seeds ``seeding.uniform`` lies in [0, 1) with means within 0.005 of 1/2 (5.5 standard errors), variances
    within 0.002 of 1/12 (8.5) and correlations between its 4 columns below 0.02 (6.3): false-alarm rate < 1e-7 per
    check (normal approximation) for a uniform generator; fixed seeds."""
    seeds = [0, 1, 42, 2**40 + 7, 2**63 - 1, -5]
    got = seeding.splitmix64(torch.tensor(seeds), 4)
    assert [[v % 2**64 for v in row] for row in got.tolist()] == [splitmix64_reference(s % 2**64, 4) for s in seeds]
    u = seeding.uniform(torch.arange(100_000), 4)
    assert 0 <= u.min() and u.max() < 1
    torch.testing.assert_close(u.mean(0), torch.full((4,), 0.5, dtype=torch.float64), atol=0.005, rtol=0)
    torch.testing.assert_close(u.var(0), torch.full((4,), 1 / 12, dtype=torch.float64), atol=0.002, rtol=0)
    assert torch.corrcoef(u.T).sub(torch.eye(4, dtype=torch.float64)).abs().max() < 0.02


def test_seeded_normals_are_standard_normal_and_independent_of_the_uniforms_before_them() -> None:
    """``seeding.normal`` (Box–Muller of the SplitMix64 outputs after ``skip``): over 100,000 seeds,
    means within 0.02 of 0 (6.3 standard errors), variances within 0.03 of 1 (6.7) and kurtoses
    within 0.15 of 3 (9.7), correlations with each other and with the ``skip`` uniforms before them
    below 0.02 (6.3): false-alarm rate < 1e-9 per check; and row i depends on seed i alone."""
    seeds = torch.arange(100_000)
    z = seeding.normal(seeds, 3, skip=4)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), torch.ones(3, dtype=torch.float64), atol=0.03, rtol=0)
    kurtosis = (z - z.mean(0)).pow(4).mean(0) / z.var(0).pow(2)
    torch.testing.assert_close(kurtosis, torch.full((3,), 3.0, dtype=torch.float64), atol=0.15, rtol=0)
    both = torch.cat([seeding.uniform(seeds, 4), z], 1)
    assert torch.corrcoef(both.T).sub(torch.eye(7, dtype=torch.float64)).abs().max() < 0.02
    assert torch.equal(seeding.normal(seeds[5:9], 3, skip=4), z[5:9])  # each row from its own seed


def test_seeded_uniforms_are_the_top_53_bits_of_splitmix64() -> None:
    """``seeding.uniform`` is the top 53 bits of each published SplitMix64 output times 2⁻⁵³, bit for bit: the initial
    states that seeds give are fixed by that rule, on every device and in every version."""
    seeds = [0, 1, 42, 2**63 - 1, -5]
    expect = [[(v >> 11) * 2.0**-53 for v in splitmix64_reference(s % 2**64, 3)] for s in seeds]
    assert seeding.uniform(torch.tensor(seeds), 3).tolist() == expect


def test_seeded_normals_are_box_muller_of_the_splitmix64_outputs_after_skip() -> None:
    """``seeding.normal(seeds, n, skip)`` is the Box–Muller transform of SplitMix64 outputs ``skip + 1 … skip + n``
    (radii) and ``skip + n + 1 … skip + 2n`` (angles), within 1e-12: never of the outputs the ``skip`` uniforms before
    them used, which would tie MuJoCo's initial velocities to its initial positions."""
    seeds, n, skip = [0, 7, 2**62 + 3, -9], 3, 4
    expect = []
    for s in seeds:
        u = [(v >> 11) * 2.0**-53 for v in splitmix64_reference(s % 2**64, skip + 2 * n)][skip:]
        expect.append([math.sqrt(-2 * math.log1p(-u[i])) * math.cos(2 * math.pi * u[n + i]) for i in range(n)])
    got = seeding.normal(torch.tensor(seeds), n, skip=skip)
    torch.testing.assert_close(got, torch.tensor(expect, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_the_draws_after_a_seeded_reset_depend_on_every_seed() -> None:
    """After ``reset(seed=[...])`` the unseeded draws (later resets and autoresets) come from a generator seeded from
    all the seeds: two seed lists that differ in their last entry only give other draws."""
    a, b = envs.CartPoleVectorEnv(num_envs=4), envs.CartPoleVectorEnv(num_envs=4)
    a.reset(seed=[1, 2, 3, 4])
    b.reset(seed=[1, 2, 3, 5])
    assert not torch.equal(a.reset()[0], b.reset()[0])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_each_env_is_seeded_by_its_own_seed(case: Case) -> None:
    """Env i starts from a state that depends on seed[i] alone: a population split across processes
    (each with its own batch of envs) draws the same episodes."""
    whole = gym.make_vec(case.flipes_id, num_envs=6)
    part = gym.make_vec(case.flipes_id, num_envs=2)
    obs, _ = whole.reset(seed=[10, 11, 12, 13, 14, 15])
    assert torch.equal(part.reset(seed=[13, 14])[0], obs[3:5])
    assert torch.equal(part.reset(seed=13)[0], obs[3:5])  # an int seed s means seeds s, s + 1, ...
    assert torch.equal(whole.reset(seed=np.arange(10, 16))[0], obs)
    obs_b, _ = whole.reset(seed=[10, 11, 12, 13, 14, 99])
    assert torch.equal(obs_b[:5], obs[:5]) and not torch.equal(obs_b[5], obs[5])
    with pytest.raises(ValueError, match="6 ints"):
        whole.reset(seed=[1, 2, 3])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_initial_states_are_uniform_over_gymnasiums_ranges(case: Case) -> None:
    """The initial states of 4096 envs, drawn from the per-env reset seeds and then from the env's own generator (an
    unseeded reset, as autoresets draw), are uniform over gymnasium's initial box: inside it, every component reaching
    within 1% of both ends with its empirical CDF within the DKW bound of the uniform one, and every pair of components
    uncorrelated (a Hoeffding bound on the mean product of the centered uniforms); family-wise false alarm < 2e-6.
    Acrobot's are float32 values, as gymnasium keeps them."""
    n = 4096
    env = gym.make_vec(case.flipes_id, num_envs=n)
    ranges = {
        "CartPole-v1": ([-0.05] * 4, [0.05] * 4),
        "Acrobot-v1": ([-0.1] * 4, [0.1] * 4),
        "Pendulum-v1": ([-math.pi, -1.0], [math.pi, 1.0]),
        "MountainCarContinuous-v0": ([-0.6, 0.0], [-0.4, 0.0]),
    }
    low, high = (torch.tensor(v, dtype=torch.float64) for v in ranges[case.gym_id])
    if case.gym_id == "Acrobot-v1":  # float32 states: a draw within 2e-9 of ±0.1 rounds to float32(±0.1), just outside
        low, high = low.float().double(), high.float().double()
    varies = high > low  # MountainCar's velocity starts at exactly 0
    k = int(varies.sum())
    alpha = 1e-6 / (2 * (k + k * (k - 1) // 2))  # Bonferroni: 2 draws × (k CDFs + k(k - 1)/2 pairs)
    # DKW with Massart's constant, P(sup |F_n - F| > e) <= 2 exp(-2 n e²); 1e-6 more for Acrobot's float32 rounding
    # (< 4e-8 of a width, the ends included)
    dkw = math.sqrt(math.log(2 / alpha) / (2 * n)) + 1e-6
    hoeffding = math.sqrt(math.log(2 / alpha) / (8 * n))  # a product of centered uniforms lies in [-1/4, 1/4]
    ecdf = torch.arange(1, n + 1, dtype=torch.float64)[:, None] / n
    for seed in (0, None):  # the per-env seeds 0..4095, then the generator they seeded
        env.reset(seed=seed)
        s = env.state
        assert ((s >= low) & (s <= high)).all() and (s[:, ~varies] == low[~varies]).all()
        u = ((s - low) / (high - low))[:, varies]  # uniform on [0, 1] if the states are
        assert (u.amin(0) < 0.01).all() and (u.amax(0) > 0.99).all()  # false alarm 2k · 0.99^4096 < 1e-16
        x = u.sort(0).values
        ks = torch.maximum(ecdf - x, x - (ecdf - 1 / n)).amax(0)
        assert (ks < dkw).all(), (seed, ks, dkw)
        c = u - 0.5
        products = [(c[:, i] * c[:, j]).mean().item() for i in range(k) for j in range(i + 1, k)]
        assert all(abs(p) < hoeffding for p in products), (seed, products, hoeffding)
        if case.gym_id == "Acrobot-v1":  # gymnasium keeps Acrobot's initial state in float32
            assert torch.equal(s, s.float().double())


def test_reset_mask_resets_only_masked_envs() -> None:
    """``reset(options={'reset_mask': m})`` resets exactly the masked envs (new state, elapsed 0) and leaves the
    others' state and elapsed count bit for bit, returning every env's current observation; a numpy mask works too;
    with seeds, the masked envs start where a fresh env reset with the same seeds does; a mask of the wrong shape or
    with no True entry is a ValueError."""
    n = 8
    env = envs.PendulumVectorEnv(num_envs=n)
    env.reset(seed=0)
    for _ in range(3):
        env.step(torch.zeros(n, 1))
    mask = torch.arange(n) % 2 == 0
    state, elapsed = env.state.clone(), env.elapsed.clone()
    obs, _ = env.reset(options={"reset_mask": mask})
    assert torch.equal(env.state[~mask], state[~mask]) and torch.equal(env.elapsed[~mask], elapsed[~mask])
    assert not torch.isclose(env.state[mask], state[mask]).any()
    assert (env.elapsed[mask] == 0).all() and elapsed.eq(3).all()
    torch.testing.assert_close(obs[:, 2], env.state[:, 1].float())
    env.reset(options={"reset_mask": mask.numpy()})  # a numpy mask as gymnasium's SyncVectorEnv takes
    seeds = list(range(100, 100 + n))
    full, _ = envs.PendulumVectorEnv(num_envs=n).reset(seed=seeds)
    state = env.state.clone()
    obs, _ = env.reset(seed=seeds, options={"reset_mask": mask})  # masked envs start from their own seeds
    assert torch.equal(obs[mask], full[mask]) and torch.equal(env.state[~mask], state[~mask])
    with pytest.raises(ValueError, match=r"reset_mask.*shape \(8,\)"):
        env.reset(options={"reset_mask": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": torch.zeros(n, dtype=torch.bool)})


def test_reset_mask_cancels_a_pending_autoreset() -> None:
    """An env that terminated and was then reset through ``reset_mask`` is not autoreset again on the next step: it
    steps, with reward 1 and elapsed 1."""
    env = envs.CartPoleVectorEnv(num_envs=2)
    env.reset(seed=0)
    env.state = torch.tensor([[2.39, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    _, _, terminated, _, _ = env.step(torch.tensor([1, 1]))
    assert terminated.tolist() == [True, False]
    env.reset(options={"reset_mask": torch.tensor([True, False])})
    _, reward, _, _, _ = env.step(torch.tensor([1, 1]))
    assert reward.tolist() == [1.0, 1.0] and env.elapsed.tolist() == [1, 2]  # env 0 stepped, not reset again


def test_assigning_state_cancels_a_pending_autoreset() -> None:
    """Assigning ``state`` after a termination cancels the pending autoreset: the next step starts from the assigned
    state (reward 1, x unchanged by the Euler step, ẋ > 0 after pushing right)."""
    env = envs.CartPoleVectorEnv(num_envs=1)
    env.reset(seed=0)
    env.state = torch.tensor([[2.39, 2.0, 0.0, 0.0]])
    assert env.step(torch.tensor([1]))[2].item()
    env.state = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    obs, reward, *_ = env.step(torch.tensor([1]))
    assert reward.item() == 1.0 and obs[0, 0].item() == 1.0 and obs[0, 1].item() > 0  # stepped from it


def test_single_env_steps_on_past_the_end_instead_of_resetting() -> None:
    """The single env has no autoreset: a step after termination continues from the terminal state (the cart moves on
    past x = 2.44) and reports terminated=True, truncated=False again."""
    env = gym.make("flipes/CartPole-v1").unwrapped
    env.reset(seed=0)
    env.state = np.array([2.39, 2.0, 0.0, 0.0])
    assert env.step(1)[2] is True
    obs, _, terminated, truncated, _ = env.step(1)
    assert terminated is True and truncated is False and obs[0] > 2.44


def test_mountain_car_state_is_rounded_to_float32_like_gymnasiums() -> None:
    """gymnasium keeps MountainCarContinuous's state in float32; after a step the float64 state of ours holds only
    float32-representable values too."""
    env = envs.MountainCarContinuousVectorEnv(num_envs=64)
    ref = gym.make("MountainCarContinuous-v0").unwrapped
    ref.reset(seed=0)
    env.reset(seed=0)
    env.step(torch.rand(64, 1, generator=torch.Generator().manual_seed(0)))
    ref.step(np.array([0.5], dtype=np.float32))
    assert ref.state.dtype == np.float32  # what gymnasium keeps between steps
    assert torch.equal(env.state, env.state.float().double())


def test_reset_options_set_the_initial_range_like_gymnasium() -> None:
    """gymnasium's reset options: CartPole's ``low``/``high`` bound every initial observation, Pendulum's
    ``x_init``/``y_init`` bound the angle to ±0.5 and the angular velocity to 0; ``low > high`` raises gymnasium's
    'Lower bound' ValueError."""
    env = envs.CartPoleVectorEnv(num_envs=1000)
    obs, _ = env.reset(seed=0, options={"low": 0.1, "high": 0.2})
    assert (obs >= 0.1).all() and (obs <= 0.2).all()
    obs, _ = envs.PendulumVectorEnv(num_envs=1000).reset(seed=0, options={"x_init": 0.5, "y_init": 0.0})
    assert (obs[:, 0] >= math.cos(0.5) - 1e-6).all() and (obs[:, 2] == 0).all()
    with pytest.raises(ValueError, match="Lower bound"):
        env.reset(options={"low": 1.0, "high": 0.0})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_everything_stays_on_the_device(case: Case, device: str) -> None:
    """Observations, state, elapsed counts and every step output are on the env's device (numpy actions included,
    moved over), step outputs are float32, float32, bool, bool, with shapes (N, *observation shape) and (N,)."""
    env = gym.make_vec(case.flipes_id, num_envs=16, device=torch.device(device))
    obs, _ = env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    tensors = [obs, env.state, env.elapsed]
    for _ in range(3):
        tensors += env.step(random_actions(env, case, gen).to(device))[:4]
    tensors += env.step(random_actions(env, case, gen).numpy())[:4]  # numpy actions are moved over
    assert all(t.device.type == torch.device(device).type for t in tensors)
    assert [t.dtype for t in tensors[-4:]] == [torch.float32, torch.float32, torch.bool, torch.bool]
    assert tensors[-4].shape == (16, *env.single_observation_space.shape) and tensors[-3].shape == (16,)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_every_tensor_an_env_makes_is_on_its_device(case: Case) -> None:
    """Under the meta default device, an env made with device "cpu" (gymnasium.make_vec("envs:flipes/..."), float32
    with hidden velocities too, and gymnasium.make's single env) resets (all, by a mask, seeded by a list), takes
    numpy and tensor actions, autoresets past its time limit and takes a new state, all in real tensors: a factory
    without device= would make a meta tensor and fail where it meets the env's (on a GPU: a device mismatch, or a copy
    from the host every step)."""
    gen = torch.Generator().manual_seed(0)

    def actions(env: gym.vector.VectorEnv) -> torch.Tensor:
        with torch.device("cpu"):  # the test's own draws
            return random_actions(env, case, gen)

    torch.set_default_device("meta")
    try:
        assert torch.empty(1).is_meta  # the check is in force
        for dtype, hide in ((torch.float64, False), (torch.float32, True)):
            env = gym.make_vec(
                f"envs:{case.flipes_id}", num_envs=8, device="cpu", max_episode_steps=2, dtype=dtype, hide_velocities=hide
            )
            outs = [*env.reset(seed=list(range(8)))[:1], *env.reset(options={"reset_mask": np.arange(8) < 3})[:1]]
            for t in range(5):  # past the time limit: every env truncates and autoresets
                drawn = actions(env)
                outs += env.step(drawn.numpy() if t % 2 else drawn)[:4]
            env.state = env.state.cpu().numpy()
            outs += [env.state, env.elapsed, *env.step(actions(env))[:4]]
            assert all(o.device == torch.device("cpu") for o in outs)
        single = gym.make(case.flipes_id, device="cpu")
        obs, _ = single.reset(seed=0)
        single.unwrapped.state = single.unwrapped.state
        obs, reward, *_ = single.step(single.action_space.sample())
    finally:
        torch.set_default_device(None)
    assert obs.shape == single.observation_space.shape and math.isfinite(reward)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_float32_state_stays_close_to_float64(case: Case) -> None:
    """One step from the same float32-representable states with the same actions: a float32 env keeps a float32 state,
    and its observations and rewards are within 1e-4 (relative and absolute) of the float64 env's."""
    n = 512
    env64 = gym.make_vec(case.flipes_id, num_envs=n)
    env32 = gym.make_vec(case.flipes_id, num_envs=n, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    low, high = torch.tensor(case.wide_low, dtype=torch.float64), torch.tensor(case.wide_high, dtype=torch.float64)
    state = (low + (high - low) * torch.rand(n, len(low), generator=gen, dtype=torch.float64)).float().double()
    env64.state, env32.state = state, state
    actions = random_actions(env64, case, gen)
    obs64, reward64, *_ = env64.step(actions)
    obs32, reward32, *_ = env32.step(actions)
    assert env32.state.dtype == torch.float32
    torch.testing.assert_close(obs32, obs64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reward32, reward64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("env_id", ["flipes/Pendulum-v1", "flipes/MountainCarContinuous-v0"])
def test_box_actions_of_another_dtype_step_as_the_envs_dtype(env_id: str) -> None:
    """A Box env stepping in float64 given float32 actions (a float32 policy's) steps on them cast to its own dtype:
    observations, rewards and ends equal those of the same actions given as float64, bit for bit over several steps."""
    given, cast = gym.make_vec(env_id, num_envs=3), gym.make_vec(env_id, num_envs=3)
    assert given.dtype == torch.float64
    given.reset(seed=0), cast.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        actions = torch.rand(3, 1, generator=gen) * 1.8 - 0.9
        got, expected = given.step(actions), cast.step(actions.double())
        assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(got[:4], expected[:4], strict=True))


class Picks(envs.base.TorchVectorEnv):
    """An env of one's own on TorchVectorEnv with the action space it is given; it keeps the actions its dynamics get."""

    state_dim = 1

    def __init__(self, num_envs: int, space: gym.Space) -> None:
        super().__init__(num_envs, 5, "cpu", torch.float32, gym.spaces.Box(-1, 1, (1,), np.float32), space)

    def dynamics(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        self.seen = action
        return state

    def _reward_terminated(self, state, action, next_state):  # type: ignore[no-untyped-def]
        return torch.zeros(self.num_envs), torch.zeros(self.num_envs, dtype=torch.bool)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state.float().clone()

    def _initial_range(self, options):  # type: ignore[no-untyped-def]
        return [-1.0], [1.0]


def test_an_own_torch_envs_discrete_start_and_multi_discrete_actions_reach_its_dynamics_as_declared() -> None:
    """A TorchVectorEnv subclass of one's own takes Discrete(3, start=-1) actions -1, 0 and 1 (they were refused as
    out of [0, 3)) and refuses 2 naming [-1, 2); its MultiDiscrete and MultiBinary actions reach the dynamics as the
    very int64 and int8 tensors given (they were cast to float32), and float ones are refused naming the space."""
    start = Picks(4, gym.spaces.Discrete(3, start=-1))
    start.reset(seed=0)
    start.step(torch.tensor([-1, 0, 1, 1]))
    assert torch.equal(start.seen, torch.tensor([-1, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"integers in \[-1, 2\); got actions from -1 to 2$"):
        start.step(torch.tensor([-1, 0, 1, 2]))
    for space, given in [
        (gym.spaces.MultiDiscrete([3, 2]), torch.tensor([[2, 1], [0, 0], [1, 1], [2, 0]])),
        (gym.spaces.MultiBinary(3), torch.randint(0, 2, (4, 3), dtype=torch.int8)),
    ]:
        env = Picks(4, space)
        env.reset(seed=0)
        env.step(given)
        assert env.seen.dtype == given.dtype and torch.equal(env.seen, given)
        with pytest.raises(ValueError, match=r"Picks.step takes integer actions of shape \(4, [23]\) \(Multi.*torch.float32"):
            env.step(given.float())


def test_bad_actions_raise_a_helpful_value_error() -> None:
    """Actions of the wrong shape or number of envs, discrete actions out of range (too large or negative, torch or
    numpy) and float actions for a Discrete space each raise a ValueError naming the expected shape, range or dtype
    and what was given; every valid Acrobot action and a (N,) Pendulum action are taken; a step before reset is a
    RuntimeError naming reset, and a state of the wrong shape a ValueError naming both shapes."""
    cartpole = gym.make_vec("flipes/CartPole-v1", num_envs=4)
    cartpole.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\).*got shape \(4, 1\)"):
        cartpole.step(torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"integers in \[0, 2\).*from 0 to 2"):
        cartpole.step(torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"from -1 to 1"):
        cartpole.step(np.array([0, 1, -1, 0]))
    with pytest.raises(ValueError, match=r"integer actions.*float32"):
        cartpole.step(torch.zeros(4))
    acrobot = gym.make_vec("flipes/Acrobot-v1", num_envs=4)
    acrobot.reset(seed=0)
    acrobot.step(torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
        acrobot.step(torch.tensor([0, 1, 3, 2]))
    pendulum = gym.make_vec("flipes/Pendulum-v1", num_envs=4)
    pendulum.reset(seed=0)
    pendulum.step(torch.zeros(4))  # (N,) is fine for a one-number action
    with pytest.raises(ValueError, match=r"shape \(4, 1\) or \(4,\); got shape \(4, 2\)"):
        pendulum.step(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"shape \(4, 1\)"):
        pendulum.step(torch.zeros(3, 1))
    with pytest.raises(RuntimeError, match="reset"):
        envs.CartPoleVectorEnv(num_envs=2).step(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"state must have shape \(4, 4\), got \(4, 3\)"):
        cartpole.state = torch.zeros(4, 3)


KEPT_WITHOUT_VELOCITIES = {  # the observation's columns that are not velocities, as gymnasium documents them
    "CartPole-v1": [0, 2],  # x, θ
    "Acrobot-v1": [0, 1, 2, 3],  # cos θ₁, sin θ₁, cos θ₂, sin θ₂
    "Pendulum-v1": [0, 1],  # cos θ, sin θ
    "MountainCarContinuous-v0": [0],  # position
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.gym_id)
def test_hide_velocities_observes_the_other_columns_of_the_same_episodes(case: Case) -> None:
    """With ``hide_velocities=True`` every observation (autoresets included) is exactly the full env's non-velocity
    columns at the same step, the rewards and flags are the full env's, the spaces are its spaces' columns, and the
    single env made by ``gymnasium.make`` observes the same."""
    kept = KEPT_WITHOUT_VELOCITIES[case.gym_id]
    full = gym.make_vec(case.flipes_id, num_envs=16)
    part = gym.make_vec(case.flipes_id, num_envs=16, hide_velocities=True)
    space = full.single_observation_space
    assert part.single_observation_space == gym.spaces.Box(space.low[kept], space.high[kept], dtype=np.float32)
    assert part.observation_space.shape == (16, len(kept))
    obs_full, _ = full.reset(seed=3)
    obs_part, _ = part.reset(seed=3)
    assert torch.equal(obs_part, obs_full[:, kept])
    gen = torch.Generator().manual_seed(0)
    ends = 0
    for _ in range(1000):  # past MountainCarContinuous's time limit of 999 steps
        actions = random_actions(full, case, gen)
        *out_full, _ = full.step(actions)
        *out_part, _ = part.step(actions)
        assert torch.equal(out_part[0], out_full[0][:, kept])
        for a, b in zip(out_part[1:], out_full[1:], strict=True):
            assert torch.equal(a, b)
        ends += int((out_full[2] | out_full[3]).sum())
    assert ends > 0  # the autoresets were compared too
    single = gym.make(case.flipes_id, hide_velocities=True)
    assert np.array_equal(single.reset(seed=5)[0], gym.make(case.flipes_id).reset(seed=5)[0][kept])
    with pytest.raises(ValueError, match=r"^hide_velocities must be true or false, got 'yes'$"):
        gym.make_vec(case.flipes_id, num_envs=2, hide_velocities="yes")


def test_bad_env_options_raise_errors_naming_the_option_and_the_value() -> None:
    """Each of these is an error whose whole message names the option, what it takes and the value given: no envs or a
    float count, a time limit of 0 or not an integer (1.5 truncated after 2 steps), a half-precision dtype, a
    ``reset_mask`` before any full reset or of floats, Box actions of bools, an ``elapsed`` of another length, a render
    mode."""
    cases = [
        (lambda: envs.CartPoleVectorEnv(num_envs=0), ValueError, "num_envs must be an integer of at least 1, got 0"),
        (lambda: envs.CartPoleVectorEnv(num_envs=2.0), ValueError, "num_envs must be an integer of at least 1, got 2.0"),
        (lambda: envs.CartPoleVectorEnv(num_envs=2, max_episode_steps=0), ValueError,
         "max_episode_steps must be an integer of at least 1 (or None), got 0"),
        (lambda: envs.CartPoleVectorEnv(num_envs=2, max_episode_steps=1.5), ValueError,
         "max_episode_steps must be an integer of at least 1 (or None), got 1.5"),
        (lambda: envs.CartPoleVectorEnv(num_envs=2, max_episode_steps="10"), ValueError,
         "max_episode_steps must be an integer of at least 1 (or None), got '10'"),
        (lambda: envs.CartPoleVectorEnv(num_envs=2, max_episode_steps=True), ValueError,
         "max_episode_steps must be an integer of at least 1 (or None), got True"),
        (lambda: envs.CartPoleVectorEnv(num_envs=2, dtype=torch.float16), ValueError,
         'dtype must be torch.float32 or torch.float64 ("float32" or "float64" in JSON), got torch.float16'),
        (lambda: envs.CartPoleVectorEnv(num_envs=2).reset(options={"reset_mask": torch.tensor([True, False])}), RuntimeError,
         "reset with a reset_mask needs a full reset() first: the other envs have no state yet"),
        (lambda: setattr(envs.CartPoleVectorEnv(num_envs=2), "elapsed", torch.zeros(3)), ValueError,
         "elapsed must be one int or have shape (2,), got shape (3,)"),
        (lambda: envs.CartPoleEnv(render_mode="human"), ValueError,
         "CartPoleEnv does not render; render_mode must be None, got 'human'"),
    ]  # fmt: skip
    for make, error, message in cases:
        with pytest.raises(error, match="^" + re.escape(message) + "$"):
            make()
    pendulum, cartpole = envs.PendulumVectorEnv(num_envs=2), envs.CartPoleVectorEnv(num_envs=2)
    pendulum.reset(seed=0)
    cartpole.reset(seed=0)
    bools = "PendulumVectorEnv.step takes real-valued actions of shape (2, 1); got dtype torch.bool"
    with pytest.raises(ValueError, match="^" + re.escape(bools) + "$"):
        pendulum.step(torch.ones(2, 1, dtype=torch.bool))
    floats = "options['reset_mask'] must be a bool tensor or array of shape (2,), got dtype torch.float32 and shape (2,)"
    with pytest.raises(ValueError, match="^" + re.escape(floats) + "$"):
        cartpole.reset(options={"reset_mask": torch.ones(2)})


def test_state_assignment_is_checked_and_copied() -> None:
    """Assigning a wrongly shaped state raises a ValueError naming (N, state_dim); an assigned state is converted to
    float64 and copied, so changing the caller's tensor afterwards does not change the env."""
    env = envs.AcrobotVectorEnv(num_envs=3)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        env.state = torch.zeros(4, 3)
    s = torch.zeros(3, 4)
    env.state = s
    s += 1  # the env keeps its own copy
    assert env.state.dtype == torch.float64 and (env.state == 0).all()


def test_dynamics_are_pure_functions() -> None:
    """Each env's ``dynamics(state, action)`` leaves its input state unchanged and returns a new tensor of the same
    shape that differs from it; the same values in another memory layout (column-major, as the envs store their state,
    or a strided view of a wider tensor) give the same result bit for bit."""
    from envs import acrobot, cartpole, mountain_car, pendulum

    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.5

    n = 37  # not a multiple of a SIMD width: vectorized loops and their scalar tails both run
    for module, state, action in [
        (cartpole, rand(n, 4), torch.randint(0, 2, (n,), generator=gen)),
        (acrobot, rand(n, 4), torch.randint(0, 3, (n,), generator=gen)),
        (pendulum, rand(n, 2), rand(n)),
        (mountain_car, rand(n, 2), rand(n)),
    ]:
        before = state.clone()
        nxt = module.dynamics(state, action)
        assert torch.equal(state, before) and nxt.shape == state.shape and not torch.equal(nxt, state)
        assert nxt.data_ptr() != state.data_ptr()
        d = state.shape[1]
        column_major = torch.empty(d, n, dtype=state.dtype).copy_(state.T).T
        strided = torch.cat([state, rand(n, 3)], 1)[:, :d]  # rows 3 elements apart
        for other in (column_major, strided):
            assert torch.equal(other, state) and other.stride() != state.stride()
            assert torch.equal(module.dynamics(other, action), nxt), (module.__name__, other.stride())
            assert torch.equal(other, state)


def test_a_step_restores_torchs_thread_count() -> None:
    """``num_threads=1`` holds only during ``step()``: the dynamics run with torch at 1 thread, and torch's own thread
    count is the caller's (2) again after it."""
    env = envs.PendulumVectorEnv(num_envs=2, num_threads=1)
    env.reset(seed=0)
    during = []
    dynamics = env.dynamics

    def counted(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        during.append(torch.get_num_threads())
        return dynamics(state, action)

    env.dynamics = counted  # type: ignore[method-assign]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        env.step(torch.zeros(2, 1))
        assert during == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_registration_is_idempotent_and_make_vec_takes_kwargs() -> None:
    """Calling ``register_envs()`` again warns nothing and keeps the same spec object; the flipes/ ids are exactly the
    four classic-control and five MuJoCo ones; ``make_vec`` passes ``max_episode_steps`` (truncated at step 3, not
    before) and the env's own ``sutton_barto_reward`` (reward 0 while the pole stands)."""
    spec = gym.spec("flipes/CartPole-v1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered again
        envs.register_envs()
    assert gym.spec("flipes/CartPole-v1") is spec
    mujoco = {f"flipes/{name}-v5" for name in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid")}  # tests/test_warp_envs.py
    assert {k for k in gym.registry if k.startswith("flipes/")} == {c.flipes_id for c in CASES} | mujoco
    env = gym.make_vec("flipes/CartPole-v1", num_envs=2, max_episode_steps=3, sutton_barto_reward=True)
    env.reset(seed=0)
    steps = [env.step(torch.tensor([0, 1])) for _ in range(3)]
    assert steps[-1][3].all() and not steps[1][3].any()
    assert all((s[1] == 0).all() for s in steps)  # Sutton & Barto's reward: 0 until the pole falls


def test_unknown_ids_raise_gymnasiums_error() -> None:
    """An unknown name, version or namespace raises gymnasium's own NameNotFound, VersionNotFound or
    NamespaceNotFound, as for gymnasium's ids."""
    with pytest.raises(gym.error.NameNotFound, match="NoSuch"):
        gym.make_vec("flipes/NoSuch-v0", num_envs=2)
    with pytest.raises(gym.error.VersionNotFound, match="CartPole"):
        gym.make_vec("flipes/CartPole-v7", num_envs=2)
    with pytest.raises(gym.error.NamespaceNotFound):
        gym.make("flipez/CartPole-v1")


def test_module_prefix_registers_without_an_import() -> None:
    """gymnasium >= 1.0 loads no plugins: a bare id needs ``import envs``, ``envs:<id>`` imports it."""
    code = textwrap.dedent("""
        import gymnasium as gym
        try:
            gym.make_vec("flipes/CartPole-v1", num_envs=2)
        except gym.error.Error as e:
            print("bare id:", type(e).__name__)
        env = gym.make_vec("envs:flipes/CartPole-v1", num_envs=2)
        print(type(env).__name__, env.reset(seed=0)[0].shape)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.splitlines() == ["bare id: NamespaceNotFound", "CartPoleVectorEnv torch.Size([2, 4])"]


def test_benchmark_script_smoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/bench_envs.py --quick runs and prints one table row per engine: flipes, vector_entry_point and sync, in
    that order. Run as ``__main__`` in this process (a new one costs seconds of imports; --quick sets no thread count):
    an exception or exit fails the test, as a traceback or a nonzero status would."""
    import runpy

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setattr(sys, "argv", ["bench_envs.py", "--quick"])
    capsys.readouterr()
    runpy.run_path(str(ROOT / "scripts" / "bench_envs.py"), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "steps/s" not in line]
    assert rows == ["flipes", "vector_entry_point", "sync"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pendulum_env_n_with_its_own_gravity_steps_exactly_as_one_env_built_with_that_gravity(dtype: torch.dtype) -> None:
    """Domain randomization's per-env physics: env n of a Pendulum whose ``g_range`` drew ``g[n]`` gives, step by step
    for 200 steps of random torques, exactly the state, observation and reward of a one-env Pendulum built with
    ``g=float(g[n])`` from the same state (bit for bit, in float64 and float32), and the draws differ between envs."""
    n = 6
    env = envs.PendulumVectorEnv(num_envs=n, dtype=dtype, g_range=(2.0, 15.0))
    env.reset(seed=0)
    assert env.g.shape == (n,) and env.g.dtype == dtype and len(set(env.g.tolist())) == n
    singles = [envs.PendulumVectorEnv(num_envs=1, dtype=dtype, g=float(env.g[i])) for i in range(n)]
    for i, single in enumerate(singles):
        single.reset(seed=0)
        single.state = env.state[i : i + 1]
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        actions = torch.rand(n, 1, generator=gen) * 4 - 2
        obs, reward = env.step(actions)[:2]
        for i, single in enumerate(singles):
            single_obs, single_reward = single.step(actions[i : i + 1])[:2]
            assert torch.equal(single.state[0], env.state[i])
            assert torch.equal(single_obs[0], obs[i]) and torch.equal(single_reward[0], reward[i])


def test_pendulum_g_range_draws_each_envs_gravity_from_its_own_seed_at_every_reset() -> None:
    """``g_range``: env i of ``reset(seed=s)`` gets the gravity and initial state of the one env of ``reset(seed=s + i)``
    (so a population split across processes keeps each member's physics), the initial states are those of the env
    without ``g_range``, every draw lies in the range, a ``reset_mask`` redraws the masked envs' alone, an autoreset
    keeps the episode's, and a range set between resets (a curriculum) is the next reset's."""
    n, s = 5, 7
    env = envs.PendulumVectorEnv(num_envs=n, max_episode_steps=2, g_range=[8.0, 12.0])
    plain = envs.PendulumVectorEnv(num_envs=n)
    env.reset(seed=s)
    plain.reset(seed=s)
    assert torch.equal(env.state, plain.state)
    assert ((env.g >= 8.0) & (env.g <= 12.0)).all()
    for i in range(n):
        one = envs.PendulumVectorEnv(num_envs=1, g_range=[8.0, 12.0])
        one.reset(seed=s + i)
        assert torch.equal(one.g, env.g[i : i + 1]) and torch.equal(one.state[0], env.state[i])
    drawn = env.g.clone()
    mask = torch.tensor([True, False, True, False, False])
    env.reset(seed=100, options={"reset_mask": mask})
    assert torch.equal(env.g[~mask], drawn[~mask]) and not torch.equal(env.g[mask], drawn[mask])
    drawn = env.g.clone()
    for _ in range(3):  # the time limit of 2 steps ends every episode; the third step autoresets them
        env.step(torch.zeros(n, 1))
    assert torch.equal(env.g, drawn)
    env.g_range = (20.0, 20.0)
    env.reset(seed=s)
    assert env.g.tolist() == [20.0] * n


def test_pendulum_gravity_is_the_splitmix64_draw_after_the_initial_states() -> None:
    """Env i of ``reset(seed=s)`` with ``g_range=[low, high]`` gets exactly ``low + (high - low) u``, ``u`` the uniform of
    SplitMix64 output ``state_dim + 1`` of seed ``s + i``: not one of the outputs its initial θ and θ̇ are drawn from,
    so an env's gravity is independent of where its pendulum starts."""
    n, s, low, high = 4, 11, 8.0, 12.0
    env = envs.PendulumVectorEnv(num_envs=n, dtype=torch.float64, g_range=[low, high])
    env.reset(seed=s)
    u = seeding.uniform(s + torch.arange(n), env.state_dim + 1)
    assert torch.equal(env.g, low + (high - low) * u[:, env.state_dim])


def test_pendulum_g_range_set_to_none_keeps_the_last_draws_until_g_is_assigned() -> None:
    """Turning randomization off between resets (``g_range = None``) keeps each env's last gravity through later resets;
    assigning ``g`` gives every env that one gravity again, as an env built with it steps."""
    env = envs.PendulumVectorEnv(num_envs=3, g_range=[8.0, 12.0])
    env.reset(seed=5)
    drawn = env.g.clone()
    env.g_range = None
    env.reset(seed=6)
    assert torch.equal(env.g, drawn)
    env.g = 10.0
    plain = envs.PendulumVectorEnv(num_envs=3)
    obs, _ = env.reset(seed=7)
    assert torch.equal(obs, plain.reset(seed=7)[0])
    action = torch.full((3, 1), 0.5)
    assert torch.equal(env.step(action)[0], plain.step(action)[0])


def test_pendulum_bad_gravity_options_raise_errors_naming_the_option_and_the_value() -> None:
    """A ``g_range`` that is not two increasing numbers, a ``g`` that is not finite or of another length than the envs,
    and ``g`` given together with ``g_range`` (which would replace it unnoticed) are errors whose whole message names the
    option, what it takes and the value given."""
    pendulum = envs.PendulumVectorEnv
    cases = [
        (lambda: pendulum(num_envs=2, g_range=[8.0]), "g_range must be [low, high], two numbers (or None for one g), got [8.0]"),
        (lambda: pendulum(num_envs=2, g_range=[12.0, 8.0]), "g_range must be [low, high] with low <= high, got [12.0, 8.0]"),
        (lambda: pendulum(num_envs=2, g_range=[8.0, "12"]), "g_range's high must be a number, got '12'"),
        (lambda: pendulum(num_envs=2, g=float("nan")), "g must be a finite number, got nan"),
        (lambda: pendulum(num_envs=2, g=12.0, g_range=[8.0, 12.0]),
         "g and g_range were both given: g_range draws each env's g at every reset; give g for one value or g_range to "
         "randomize it, not both"),
        (lambda: setattr(pendulum(num_envs=2), "g", [9.0, 10.0, 11.0]),
         "g must be one number or 2 numbers (one per env), got shape (3,)"),
    ]  # fmt: skip
    for make, message in cases:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            make()
