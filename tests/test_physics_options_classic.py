"""envs/physics.py on Acrobot and MountainCarContinuous: their physical constants as options, fixed (against
gymnasium's own env with the same attributes set by hand) or drawn per env at every reset, as CartPole's in
tests/test_physics_options.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import assert_draws_are_seed_functions, assert_each_env_steps_as_its_own, metrics

import envs
import flipes
from envs import acrobot
from envs.physics import RandomizedPhysics
from flipes.rl import make_vector_env
from flipes.rl.envs import EnvOptionError

PI = np.pi
CLOCK = ("seconds", "steps_per_second", "eval_seconds")  # the metrics rows' timings


@dataclass
class Spec:
    """One env with physics options: how to reach gymnasium's attribute of an option, what to draw and compare."""

    gym_id: str
    vector: type[RandomizedPhysics]
    attribute: Callable[[str], str]  # option name -> gymnasium's attribute name
    ranges: dict[str, list[float]]  # one range per constant, in draw order
    fixed: list[dict[str, float]]  # non-default fixed physics compared with gymnasium's env
    wide_low: list[float]  # states drawn here cover the state space, terminal regions included
    wide_high: list[float]
    rtol: float  # next state against gymnasium's (float64 both, rounded differently)
    atol: float
    min_terminations: int
    refusals: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    @property
    def flipes_id(self) -> str:
        return f"flipes/{self.gym_id}"

    def states(self, n: int, gen: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        low, high = torch.tensor(self.wide_low, dtype=torch.float64), torch.tensor(self.wide_high, dtype=torch.float64)
        return (low + (high - low) * torch.rand(n, len(low), generator=gen, dtype=torch.float64)).to(dtype)

    def actions(self, env: envs.base.TorchVectorEnv, gen: torch.Generator) -> torch.Tensor:
        space = env.single_action_space
        if isinstance(space, gym.spaces.Discrete):
            return torch.randint(0, int(space.n), (env.num_envs,), generator=gen)
        return -1.5 + 3.0 * torch.rand(env.num_envs, *space.shape, generator=gen)  # beyond ±1: clipping too

    def gymnasium(self, physics: dict[str, float]) -> gym.Env:
        """gymnasium's own env with its attributes of ``physics`` set by hand."""
        ref = gym.make(self.gym_id, disable_env_checker=True).unwrapped
        for name, value in physics.items():
            assert hasattr(ref, self.attribute(name))
            setattr(ref, self.attribute(name), value)
        return ref


ACROBOT = Spec(
    "Acrobot-v1",
    envs.AcrobotVectorEnv,
    str.upper,
    {
        "link_length_1_range": [0.5, 1.5],
        "link_mass_1_range": [0.5, 2.0],
        "link_mass_2_range": [0.5, 2.0],
        "link_com_pos_1_range": [0.3, 0.7],
        "link_com_pos_2_range": [0.3, 0.7],
        "link_moi_range": [0.5, 1.5],
    },
    [
        {"link_length_1": 1.3},
        {"link_mass_1": 1.7},
        {"link_mass_2": 0.6},
        {"link_com_pos_1": 0.35},
        {"link_com_pos_2": 0.65},
        {"link_moi": 0.8},
        {
            "link_length_1": 0.9,
            "link_mass_1": 1.2,
            "link_mass_2": 0.7,
            "link_com_pos_1": 0.4,
            "link_com_pos_2": 0.45,
            "link_moi": 1.3,
        },
    ],
    [-PI, -PI, -4 * PI, -9 * PI],
    [PI, PI, 4 * PI, 9 * PI],
    rtol=1e-12,
    atol=1e-12,
    min_terminations=100,
    refusals=[
        ({"link_mass_2": 0.0}, "link_mass_2 must be a finite number > 0, got 0.0"),
        ({"link_moi": -1.0}, "link_moi must be a finite number > 0, got -1.0"),
        ({"link_length_1": float("nan")}, "link_length_1 must be a finite number > 0, got nan"),
        ({"link_com_pos_1_range": [0.7, 0.3]}, "link_com_pos_1_range must be [low, high] with low <= high, got [0.7, 0.3]"),
        ({"link_mass_1_range": [0.0, 1.0]}, "link_mass_1_range's low must be a finite number > 0, got 0.0"),
        (
            {"link_moi": 1.2, "link_moi_range": [0.5, 1.5]},
            "link_moi and link_moi_range were both given: link_moi_range draws each env's link_moi at every reset; "
            "give link_moi for one value or link_moi_range to randomize it, not both",
        ),
    ],
)
MOUNTAIN_CAR = Spec(
    "MountainCarContinuous-v0",
    envs.MountainCarContinuousVectorEnv,
    str,
    {"power_range": [0.001, 0.002]},
    [{"power": 0.0011}, {"power": 0.0025}],
    [-1.2, -0.07],
    [0.6, 0.07],
    rtol=0.0,
    atol=1e-7,  # both round the state to float32 after a step, gymnasium's arithmetic partly in float32 before
    min_terminations=40,
    refusals=[
        ({"power": 0.0}, "power must be a finite number > 0, got 0.0"),
        ({"power": float("inf")}, "power must be a finite number > 0, got inf"),
        ({"power_range": [0.002, 0.001]}, "power_range must be [low, high] with low <= high, got [0.002, 0.001]"),
        ({"power_range": [-0.001, 0.001]}, "power_range's low must be a finite number > 0, got -0.001"),
        (
            {"power": 0.001, "power_range": [0.001, 0.002]},
            "power and power_range were both given: power_range draws each env's power at every reset; "
            "give power for one value or power_range to randomize it, not both",
        ),
    ],
)
SPECS = [ACROBOT, MOUNTAIN_CAR]


def ranged(spec: Spec) -> list[str]:
    return [name.removesuffix("_range") for name in spec.ranges]


@pytest.mark.parametrize(
    ("spec", "physics"), [(s, p) for s in SPECS for p in s.fixed], ids=lambda v: getattr(v, "gym_id", None) or ",".join(v)
)
def test_fixed_physics_match_gymnasiums_env_with_the_same_attributes(spec: Spec, physics: dict[str, float]) -> None:
    """Every transition of the vector env made with non-default physical constants, from 2048 states over the whole state
    space (the case's minimum of them terminate), equals gymnasium's own env with those attributes set by hand, stepped
    from the same state and action: next state within the case's tolerance, observations and rewards within 1e-6
    (float32), terminations exactly; and the transitions differ from those of gymnasium's defaults (the constants
    reach the dynamics)."""
    n, gen = 256, torch.Generator().manual_seed(0)
    ref, default = spec.gymnasium(physics), spec.gymnasium({})
    env = make_vector_env(spec.flipes_id, n, note=None, **physics).unwrapped
    env.reset(seed=0)
    terminations = moved = 0
    for _ in range(8):
        states, actions = spec.states(n, gen), spec.actions(env, gen)
        env.state = states
        obs, reward, terminated = env.step(actions)[:3]
        for i in range(n):
            action = actions[i].numpy() if actions.dim() > 1 else int(actions[i])
            ref.state = default.state = states[i].numpy().copy()
            their_obs, their_reward, their_terminated = ref.step(action)[:3]
            np.testing.assert_allclose(env.state[i].numpy(), np.asarray(ref.state, np.float64), rtol=spec.rtol, atol=spec.atol)
            np.testing.assert_allclose(obs[i].numpy(), their_obs, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(float(reward[i]), their_reward, rtol=1e-6, atol=1e-6)  # float32's, gymnasium's
            assert bool(terminated[i]) == their_terminated
            default.step(action)
            moved += not np.allclose(np.asarray(default.state, np.float64), env.state[i].numpy(), rtol=1e-9, atol=1e-9)
        terminations += int(terminated.sum())
    assert terminations >= spec.min_terminations and moved >= n * 8 // 2


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_default_physics_given_explicitly_are_the_default_env_bit_for_bit(spec: Spec) -> None:
    """gymnasium's values given as options make the env without options: the same states, observations, rewards and
    terminations bit for bit over 200 steps of random actions, autoresets included."""
    defaults = {c.name: c.default for c in spec.vector.constants}
    given, plain = spec.vector(16, **defaults), spec.vector(16)
    assert torch.equal(given.reset(seed=1)[0], plain.reset(seed=1)[0])
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        actions = spec.actions(plain, gen)
        for ours, theirs in zip(given.step(actions), plain.step(actions), strict=True):
            assert torch.equal(ours, theirs) if isinstance(ours, torch.Tensor) else ours == theirs
        assert torch.equal(given.state, plain.state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_default_physics_step_exactly_as_gymnasiums_values_given_per_env(spec: Spec, dtype: torch.dtype) -> None:
    """The env without options (gymnasium's constants as numbers, the arithmetic the env had before they were options)
    steps bit for bit as the same env with every constant assigned per env, ``N`` copies of gymnasium's value (the path
    of drawn and non-default constants): the next states of 512 states over the whole state space and random actions
    are equal, float64 and float32: a change to one path's arithmetic alone shows, even one below the tolerance of the
    comparison with gymnasium."""
    n, gen = 512, torch.Generator().manual_seed(4)
    plain, per_env = spec.vector(n, dtype=dtype), spec.vector(n, dtype=dtype)
    for constant in spec.vector.constants:
        setattr(per_env, constant.name, [constant.default] * n)
    assert all(getattr(per_env, c.name).shape == (n,) for c in spec.vector.constants)
    for _ in range(4):
        states, actions = spec.states(n, gen, dtype), spec.actions(plain, gen)
        plain.state = per_env.state = states
        plain.step(actions)
        per_env.step(actions)
        assert torch.equal(plain.state, per_env.state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_env_n_with_drawn_physics_steps_exactly_as_one_env_made_with_its_values(
    spec: Spec, dtype: torch.dtype, device: torch.device
) -> None:
    """Env n of an env whose ranges drew all its constants gives, for 50 steps from states over the whole state space
    and random actions, exactly the next state, observation, reward and termination of a one-env env made with
    ``float(env.<constant>[n])`` as fixed options (bit for bit, float64 and float32; 37 envs, so that vectorized and
    remainder lanes are both compared; on the test device), and the draws differ between envs."""
    n, gen = 37, torch.Generator().manual_seed(0)
    env = spec.vector(n, dtype=dtype, device=device, **spec.ranges)
    env.reset(seed=0)
    for name in ranged(spec):
        values = getattr(env, name)
        assert values.shape == (n,) and values.dtype == dtype and len(set(values.tolist())) == n
    singles = [
        spec.vector(1, dtype=dtype, device=device, **{k: float(getattr(env, k)[i]) for k in ranged(spec)}) for i in range(n)
    ]
    for single in singles:
        single.reset(seed=0)
    for _ in range(50):
        states, actions = spec.states(n, gen, dtype).to(device), spec.actions(env, gen).to(device)
        assert_each_env_steps_as_its_own(env, singles, states, actions)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_draws_are_a_pure_function_of_each_envs_seed(spec: Spec, device: torch.device) -> None:
    """Env i of ``reset(seed=s)`` draws its constants from ``s + i`` alone: envs 4..7 of 8 (on the test device) get the
    draws and initial states of an env of 4 on the CPU reset with ``s + 4``; constant k's draw is
    ``low + (high - low) u``, u the uniform of SplitMix64 output ``state_dim + k + 1`` (the initial states are those
    without ranges), the same whichever other constants are randomized."""
    eight = assert_draws_are_seed_functions(spec.vector, spec.ranges, device)
    last = spec.vector.constants[-1].name
    alone = spec.vector(8, device=device, **{f"{last}_range": spec.ranges[f"{last}_range"]})
    alone.reset(seed=21)
    assert torch.equal(getattr(alone, last), getattr(eight, last))
    assert all(getattr(alone, c.name) == c.default for c in spec.vector.constants[:-1])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_masks_and_autoresets_keep_or_redraw_the_physics(spec: Spec) -> None:
    """A ``reset_mask`` redraws the masked envs' constants alone; autoresets keep each episode's."""
    n = 5
    env = spec.vector(n, max_episode_steps=2, **spec.ranges)
    env.reset(seed=3)
    drawn = [getattr(env, name).clone() for name in ranged(spec)]
    mask = torch.tensor([True, False, True, False, False])
    env.reset(seed=100, options={"reset_mask": mask})
    for name, before in zip(ranged(spec), drawn, strict=True):
        now = getattr(env, name)
        assert torch.equal(now[~mask], before[~mask]) and not torch.equal(now[mask], before[mask])
    drawn = [getattr(env, name).clone() for name in ranged(spec)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the time limit of 2 steps ends every episode; the third step autoresets them
        env.step(spec.actions(env, gen))
    assert all(torch.equal(getattr(env, name), before) for name, before in zip(ranged(spec), drawn, strict=True))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_bad_physics_options_are_errors_naming_the_option_and_what_it_takes(spec: Spec) -> None:
    """Values the env cannot step with (a constant out of its domain or not finite, a range not two increasing such
    numbers) and a constant given both fixed and as a range are errors whose whole message names the option, what it
    takes and the value given; through ``make_vector_env`` (``--env-kwargs``) they are EnvOptionErrors carrying it."""
    for options, message in spec.refusals:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            spec.vector(2, **options)
        with pytest.raises(EnvOptionError, match=re.escape(message)):
            make_vector_env(spec.flipes_id, 2, note=None, **options)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_declares_gymnasiums_constants_with_its_defaults(spec: Spec) -> None:
    """The randomizable constants are gymnasium's attributes of the env (its names, lower case) with its defaults, in the
    ranges' order, which fixes the SplitMix64 output each draws from."""
    ref = gym.make(spec.gym_id).unwrapped
    constants = spec.vector.constants
    assert [c.name for c in constants] == ranged(spec)
    assert [c.default for c in constants] == [getattr(ref, spec.attribute(c.name)) for c in constants]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.gym_id)
def test_a_training_run_with_ranges_is_reproducible(spec: Spec, tmp_path: Path) -> None:
    """``flipes.train`` with every constant's range in ``env_kwargs`` twice gives the same rows (fitness, evaluation
    returns, timesteps, parameters' hash: all but the clock's), parameters that change between generations, and other
    parameters than the run without them. Episodes are cut at 200 steps (the ranges act from each episode's first step;
    Acrobot's sparse reward still varies among members within 200 steps at this seed, which the changed parameters
    assert)."""
    run = {"env": spec.flipes_id, "popsize": 8, "generations": 2, "hidden": [4], "seed": 0, "eval_episodes": 2}
    run |= {"max_episode_steps": 200, "tensorboard": False, "plot": False, "progress": False, "target": None}
    rows = []
    for name, env_kwargs in (("a", spec.ranges), ("b", spec.ranges), ("plain", {})):
        flipes.train(env_kwargs=env_kwargs, out=str(tmp_path / name), **run)
        rows.append([{k: v for k, v in row.items() if k not in CLOCK} for row in metrics(tmp_path / name)])
    assert len(rows[0]) == 2 and "eval_return" in rows[0][0] and rows[0] == rows[1]
    assert rows[0][0]["params_sha256"] != rows[0][1]["params_sha256"]  # it trained: the ranges could tell
    assert [r["params_sha256"] for r in rows[0]] != [r["params_sha256"] for r in rows[2]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_acrobot_per_env_constants_step_as_the_scalar_dynamics_of_float64_coefficients(dtype: torch.dtype) -> None:
    """An Acrobot with fixed non-default constants (its per-env path) steps bit for bit as the module's
    :func:`~envs.acrobot.dynamics` given :func:`~envs.acrobot.coefficients` of those constants as Python numbers: the
    products gymnasium computes before the first tensor computed in float64, as it computes them, and rounded once to
    ``dtype``."""
    physics = ACROBOT.fixed[-1]
    n, gen = 64, torch.Generator().manual_seed(2)
    env = envs.AcrobotVectorEnv(n, dtype=dtype, **physics)
    env.reset(seed=0)
    scalar = acrobot.coefficients(**physics)
    for _ in range(8):
        states, actions = ACROBOT.states(n, gen, dtype), ACROBOT.actions(env, gen)
        env.state = states
        env.step(actions)
        assert torch.equal(env.state, acrobot.dynamics(states, actions, scalar))
