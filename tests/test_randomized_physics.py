"""Domain randomization as a user of it checks it: the drawn constants lie in their ranges whatever the env's dtype, are
uniform in them and independent of each other and of the neighbouring envs' draws."""

from __future__ import annotations

import math
import re
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import assert_draws_are_seed_functions, assert_each_env_steps_as_its_own

import envs
from envs import CartPoleVectorEnv
from envs.physics import Constant, RandomizedPhysics, Range
from flipes.rl import make_vector_env
from flipes.rl.envs import EnvOptionError

# ranges of a few float32 numbers between bounds that float32 lacks, rounding outward (past the range) or inward
NARROW = {
    "gravity_range": [9.79999, 9.80001],  # low outward
    "masscart_range": [0.999999, 1.000001],  # low outward
    "masspole_range": [0.2999999, 0.3],  # both outward
    "length_range": [0.05, 0.0500001],  # high outward
    "force_mag_range": [-0.3, -0.2999999],  # both outward
}


def test_float32_draws_lie_in_their_ranges(device: torch.device) -> None:
    """A float32 env's draws, rounded to float32 from ranges whose bounds float32 cannot hold, still lie in
    ``[low, high]`` (compared exactly, in float64), and near both bounds: rounded to nearest, some would land just past
    a bound (0.3 rounds to 0.30000001)."""
    env = CartPoleVectorEnv(4096, dtype=torch.float32, device=device, **NARROW)
    env.reset(seed=3)
    for name, (low, high) in NARROW.items():
        drawn = getattr(env, name.removesuffix("_range")).double().cpu()
        assert drawn.dtype == torch.float64 and drawn.shape == (4096,)
        assert bool((drawn >= low).all()) and bool((drawn <= high).all()), (name, drawn.min().item(), drawn.max().item())


def test_a_range_float32_has_no_number_in_draws_its_bounds_rounded_to_nearest() -> None:
    """A float32 env's range with no float32 number in it (0.1 and 0.1 + 1e-12 round to one float32 above both) draws
    that nearest float32, as a fixed value of the constant would be: not the float32 next below it."""
    env = CartPoleVectorEnv(64, dtype=torch.float32, masspole_range=[0.1, 0.1 + 1e-12], length_range=[0.3, 0.3])
    env.reset(seed=0)
    assert bool((env.masspole == np.float32(0.1)).all()), env.masspole.unique()
    assert bool((env.length == np.float32(0.3)).all()), env.length.unique()


def test_draws_are_uniform_in_the_range_and_independent_across_constants_and_envs() -> None:
    """Over 20,000 envs of one ``reset(seed=s)``, each constant's draws mapped to [0, 1) by its range pass a
    Kolmogorov-Smirnov test at the DKW bound for false-alarm rate 1e-6 (sup |F_n - F| < sqrt(ln(2e6) / 2n)); the
    correlations between two constants of one env, and between one constant of envs i and i + 1, are below 0.04
    (5.7 standard errors: false-alarm rate < 1e-7 each, normal approximation). Fixed seed."""
    n = 20_000
    ranges = {"masspole_range": [0.05, 0.5], "length_range": [0.25, 1.0], "force_mag_range": [5.0, 15.0]}
    env = CartPoleVectorEnv(n, **ranges)
    env.reset(seed=12345)
    u = torch.stack([(getattr(env, k.removesuffix("_range")) - lo) / (hi - lo) for k, (lo, hi) in ranges.items()], 1)
    bound = math.sqrt(math.log(2e6) / (2 * n))
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    for column in u.T:
        ordered = column.sort().values
        gap = torch.maximum(grid - ordered, ordered - (grid - 1 / n)).max()
        assert gap < bound, (gap, bound)
    pairs = [(u[:, 0], u[:, 1]), (u[:, 1], u[:, 2]), (u[:, 0], u[:, 2]), (u[:-1, 0], u[1:, 0]), (u[:-1, 1], u[1:, 1])]
    for a, b in pairs:
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.04


PENDULUM_RANGES = {"g_range": [2.0, 15.0], "m_range": [0.5, 2.0], "l_range": [0.5, 1.5]}


@pytest.mark.parametrize("physics", [{"m": 1.7}, {"l": 0.6}, {"g": 12.0, "m": 0.7, "l": 1.3}], ids=str)
def test_pendulum_fixed_g_m_l_match_gymnasiums_env_with_the_same_attributes(physics: dict[str, float]) -> None:
    """Every transition of Pendulum made with non-default ``g``, ``m`` and ``l``, from 1024 states (θ in [-2π, 2π],
    θ̇ in [-8, 8]) and torques beyond ±2 (clipped), equals gymnasium's ``PendulumEnv`` with those attributes set by hand
    stepped from the same state and action (float64 both: within 1e-12; observations and rewards float32, within
    1e-6), and differs from gymnasium's default pendulum (the constants reach the dynamics)."""
    n, gen = 256, torch.Generator().manual_seed(0)
    ref, default = gym.make("Pendulum-v1").unwrapped, gym.make("Pendulum-v1").unwrapped
    for name, value in physics.items():
        assert hasattr(ref, name)
        setattr(ref, name, value)
    env = make_vector_env("flipes/Pendulum-v1", n, note=None, **physics).unwrapped
    env.reset(seed=0)
    moved = 0
    for _ in range(4):
        env.state = torch.stack(
            [torch.rand(n, generator=gen) * 4 * math.pi - 2 * math.pi, torch.rand(n, generator=gen) * 16 - 8], 1
        )
        states = env.state.clone()
        actions = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 6 - 3
        obs, reward = env.step(actions)[:2]
        for i in range(n):
            ref.state = default.state = states[i].numpy().copy()
            their_obs, their_reward = ref.step(actions[i].numpy())[:2]
            np.testing.assert_allclose(env.state[i].numpy(), ref.state, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(obs[i].numpy(), their_obs, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(float(reward[i]), their_reward, rtol=1e-6, atol=1e-6)
            default.step(actions[i].numpy())
            moved += not np.allclose(default.state, env.state[i].numpy(), rtol=1e-9, atol=1e-9)
    assert moved >= n * 4 // 2


def test_pendulum_declares_gymnasiums_g_m_l_in_draw_order(device: torch.device) -> None:
    """Pendulum's randomizable constants are gymnasium's ``PendulumEnv`` attributes ``g``, ``m``, ``l`` with its
    defaults, in that order, which fixes the SplitMix64 output each draws from (``g`` first, as before ``m`` and ``l``
    were options); envs 4..7 of 8 reset with s draw what an env of 4 reset with s + 4 draws."""
    ref = gym.make("Pendulum-v1").unwrapped
    assert [(c.name, c.default) for c in envs.PendulumVectorEnv.constants] == [(k, getattr(ref, k)) for k in "gml"]
    assert_draws_are_seed_functions(envs.PendulumVectorEnv, PENDULUM_RANGES, device)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pendulum_env_n_with_drawn_g_m_l_steps_exactly_as_one_env_made_with_its_values(
    dtype: torch.dtype, device: torch.device
) -> None:
    """Env n of a Pendulum whose ranges drew ``g``, ``m`` and ``l`` gives, for 20 steps from random states and torques,
    exactly the next state, observation and reward of a one-env Pendulum made with ``float(env.g[n])``, ``m``, ``l``
    (bit for bit, float64 and float32; 37 envs), and the draws differ between envs."""
    n, gen = 37, torch.Generator().manual_seed(0)
    env = envs.PendulumVectorEnv(n, dtype=dtype, device=device, **PENDULUM_RANGES)
    env.reset(seed=0)
    assert all(len(set(getattr(env, k).tolist())) == n for k in "gml")
    made = [{k: float(getattr(env, k)[i]) for k in "gml"} for i in range(n)]
    singles = [envs.PendulumVectorEnv(1, dtype=dtype, device=device, **physics) for physics in made]
    for single in singles:
        single.reset(seed=0)
    for _ in range(20):
        states = torch.stack([torch.rand(n, generator=gen) * 4 - 2, torch.rand(n, generator=gen) * 16 - 8], 1).to(dtype)
        actions = torch.rand(n, 1, generator=gen) * 6 - 3
        assert_each_env_steps_as_its_own(env, singles, states.to(device), actions.to(device))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"m": 0.0}, "m must be a finite number > 0, got 0.0"),
        ({"l": -1.0}, "l must be a finite number > 0, got -1.0"),
        ({"l_range": [1.5, 0.5]}, "l_range must be [low, high] with low <= high, got [1.5, 0.5]"),
        ({"m_range": [float("nan"), 1.0]}, "m_range's low must be a finite number > 0, got nan"),
        ({"m": 1.0, "m_range": [0.5, 2.0]}, "m and m_range were both given"),
    ],
)
def test_pendulum_bad_m_l_are_one_line_naming_the_option(options: dict, message: str) -> None:
    """A mass or length out of its domain, a range not two increasing such numbers, or a constant given both fixed
    and as a range is an error naming the option and the value; through ``make_vector_env`` an EnvOptionError."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        envs.PendulumVectorEnv(2, **options)
    with pytest.raises(EnvOptionError, match=re.escape(message)):
        make_vector_env("flipes/Pendulum-v1", 2, note=None, **options)


def test_a_curriculum_may_set_a_range_from_numpy_or_torch_bounds() -> None:
    """A range set from two bounds held in a numpy array or a tensor (a curriculum computing them) is that range as a
    list gives it: the same ``(low, high)`` and the same draws; an array of another shape is still refused."""
    env, plain = envs.PendulumVectorEnv(6), envs.PendulumVectorEnv(6, g_range=[8.0, 12.0])
    plain.reset(seed=2)
    for bounds in (np.array([8.0, 12.0]), torch.tensor([8.0, 12.0]), np.array([8, 12], dtype=np.int64)):
        env.g_range = bounds
        assert env.g_range == (8.0, 12.0) and all(type(b) is float for b in env.g_range)
        env.reset(seed=2)
        assert torch.equal(env.g, plain.g)
    with pytest.raises(ValueError, match=r"^g_range must be \[low, high\], two numbers"):
        env.g_range = np.array([8.0, 10.0, 12.0])


@pytest.mark.parametrize(
    ("env_id", "options", "twin"),
    [
        ("CartPole-v1", {"length_range": [0.25, 1.0]}, "flipes/CartPole-v1"),
        ("gymnasium:Pendulum-v1", {"g": 12.0, "m_range": [0.5, 2.0]}, "flipes/Pendulum-v1"),
        ("MountainCarContinuous-v0", {"power": 0.002}, "flipes/MountainCarContinuous-v0"),
    ],
)
def test_a_physics_option_given_to_gymnasiums_env_names_the_flipes_env_that_takes_it(
    env_id: str, options: dict, twin: str
) -> None:
    """A physical constant or its range that only flipes' torch env of the id takes (domain randomization), given to
    gymnasium's or EnvPool's env, is one line: the engine's refusal, then the flipes id that takes it; an option
    that neither takes gets no such hint."""
    with pytest.raises(EnvOptionError) as e:
        make_vector_env(env_id, 2, note=None, **options)
    said = str(e.value)
    assert "\n" not in said and "takes no option" in said and said.endswith(f"; {twin} takes it (--env {twin})"), said
    with pytest.raises(EnvOptionError) as e:
        make_vector_env(env_id, 2, note=None, **{"nonsense": 1.0})
    assert "flipes/" not in str(e.value)


class Slide(RandomizedPhysics):
    """A point sliding with friction, randomized: an env of one's own built on envs/physics.py."""

    state_dim = 2
    friction = Constant(0.1, positive=True)
    friction_range = Range(friction)

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int = 50,
        device: str = "cpu",
        friction: float | None = None,
        friction_range: list[float] | None = None,
    ) -> None:
        obs, act = gym.spaces.Box(-5, 5, (2,), np.float32), gym.spaces.Box(-1, 1, (1,), np.float32)
        super().__init__(num_envs, max_episode_steps, device, torch.float64, obs, act)
        self._init_physics({"friction": friction, "friction_range": friction_range})

    def dynamics(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        velocity = state[:, 1] * (1 - self.friction) + 0.1 * action
        return torch.stack([state[:, 0] + 0.1 * velocity, velocity], 1)

    def _reward_terminated(self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor) -> Any:
        return -next_state[:, 0].abs().float(), torch.zeros(self.num_envs, dtype=torch.bool)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state.float().clone()

    def _initial_range(self, options: Any) -> tuple[list[float], list[float]]:
        return [-1.0, 0.0], [1.0, 0.0]


def test_a_curriculum_reaches_an_own_envs_physics_through_make_vector_envs_wrapper() -> None:
    """An env of one's own with physics options, which ``make_vector_env`` wraps (torch in and out), takes a range or a
    constant set on the wrapper, as flipes' envs (returned unwrapped) do: the next reset draws every env in the new
    range, and the wrapper reads back what the env holds; other attributes stay the wrapper's own."""
    gym.register("test_randomized/Slide-v0", vector_entry_point=Slide)
    try:
        env = make_vector_env("test_randomized/Slide-v0", 6, note=None, friction_range=[0.05, 0.2])
        assert env is not env.unwrapped
        env.friction_range = [0.5, 0.6]  # a curriculum's step
        env.reset(seed=1)
        assert env.unwrapped.friction_range == env.friction_range == (0.5, 0.6)
        assert bool(((env.unwrapped.friction >= 0.5) & (env.unwrapped.friction <= 0.6)).all())
        assert torch.equal(env.friction, env.unwrapped.friction)
        env.friction_range, env.friction = None, 0.3
        assert env.unwrapped.friction == 0.3
        with pytest.raises(AttributeError, match="has no attribute 'gravity'"):
            env.gravity  # noqa: B018
    finally:
        gym.registry.pop("test_randomized/Slide-v0")
