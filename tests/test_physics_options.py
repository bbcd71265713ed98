"""envs/physics.py on CartPole: its physical constants as options, fixed (against gymnasium's CartPoleEnv with the same
attributes) or drawn per env at every reset (domain randomization, as Pendulum's ``g_range`` in tests/test_envs.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import assert_draws_are_seed_functions, assert_each_env_steps_as_its_own, metrics

import envs
import flipes
from envs.cartpole import CartPoleVectorEnv, coefficients, dynamics
from envs.physics import Constant, Range
from flipes.rl import make_vector_env
from flipes.rl.envs import EnvOptionError

# states over the whole state space, terminal regions included, as tests/test_envs.py's CartPole case
WIDE_LOW = torch.tensor([-2.4, -2.0, -0.21, -2.0], dtype=torch.float64)
WIDE_HIGH = torch.tensor([2.4, 2.0, 0.21, 2.0], dtype=torch.float64)
CLOCK = ("seconds", "steps_per_second", "eval_seconds")  # the metrics rows' timings
RANGES = {
    "gravity_range": [8.0, 12.0],
    "masscart_range": [0.5, 2.0],
    "masspole_range": [0.05, 0.5],
    "length_range": [0.3, 0.9],
    "force_mag_range": [5.0, 15.0],
}


def wide_states(n: int, gen: torch.Generator) -> torch.Tensor:
    return WIDE_LOW + (WIDE_HIGH - WIDE_LOW) * torch.rand(n, 4, generator=gen, dtype=torch.float64)


def gymnasium_cartpole(physics: dict[str, float]) -> gym.Env:
    """gymnasium's own CartPoleEnv with its physical attributes set by hand, the derived ones recomputed as its
    ``__init__`` computes them."""
    ref = gym.make("CartPole-v1", disable_env_checker=True).unwrapped
    for name, value in physics.items():
        setattr(ref, name, value)
    ref.total_mass = ref.masspole + ref.masscart
    ref.polemass_length = ref.masspole * ref.length
    return ref


@pytest.mark.parametrize(
    "physics",
    [
        {"length": 0.6},
        {"masspole": 0.3},
        {"masscart": 2.5},
        {"gravity": 3.7},
        {"force_mag": 6.0},
        {"gravity": 11.0, "masscart": 0.7, "masspole": 0.25, "length": 0.35, "force_mag": 14.0},
    ],
    ids=lambda p: ",".join(p),
)
def test_fixed_physics_match_gymnasiums_cartpole_with_the_same_attributes(physics: dict[str, float]) -> None:
    """Every transition of the vector env made with non-default physical constants, from 2048 states over the whole state
    space (at least 50 transitions terminate), equals gymnasium's CartPoleEnv with those attributes set (``total_mass`` and
    ``polemass_length`` recomputed) stepped from the same state and action: next state within 1e-12 relative (both in
    float64, rounded differently), observations within 1e-6 (float32), rewards and terminations exactly; and so do
    the single env that ``gymnasium.make`` builds and ``make_vector_env``'s."""
    n, gen = 256, torch.Generator().manual_seed(0)
    ref = gymnasium_cartpole(physics)
    vector = make_vector_env("flipes/CartPole-v1", n, note=None, **physics).unwrapped
    single = gym.make("flipes/CartPole-v1", disable_env_checker=True, **physics)
    single.reset(seed=0)
    vector.reset(seed=0)
    terminations = 0
    for _ in range(8):
        states, actions = wide_states(n, gen), torch.randint(0, 2, (n,), generator=gen)
        vector.state = states
        obs, reward, terminated = vector.step(actions)[:3]
        for i in range(n):
            ref.state, ref.steps_beyond_terminated = states[i].numpy().copy(), None
            their_obs, their_reward, their_terminated = ref.step(int(actions[i]))[:3]
            np.testing.assert_allclose(vector.state[i].numpy(), np.asarray(ref.state), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(obs[i].numpy(), their_obs, rtol=1e-6, atol=1e-6)
            assert (float(reward[i]), bool(terminated[i])) == (their_reward, their_terminated)
            if i < 16:  # the single env on a few of them
                single.unwrapped.state = states[i].numpy()
                single_obs, single_reward, single_terminated = single.step(int(actions[i]))[:3]
                assert np.array_equal(single_obs, obs[i].numpy())
                assert (single_reward, single_terminated) == (float(reward[i]), bool(terminated[i]))
        terminations += int(terminated.sum())
    assert terminations >= 50


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_per_env_constants_step_as_the_scalar_dynamics_of_gymnasiums_float64_coefficients(dtype: torch.dtype) -> None:
    """A CartPole with fixed non-default constants (its per-env path) steps bit for bit as the module's
    :func:`dynamics` given :func:`coefficients` of those constants as Python numbers: the derived quantities computed
    in float64, as gymnasium computes them, and rounded once to ``dtype`` (in float32, computing them in float32
    instead moves five of these seven by an ulp)."""
    physics = {"gravity": 9.8, "masscart": 1.3, "masspole": 0.3, "length": 0.6, "force_mag": 12.0}
    n, gen = 256, torch.Generator().manual_seed(2)
    env = CartPoleVectorEnv(n, dtype=dtype, **physics)
    env.reset(seed=0)
    scalar = coefficients(**physics)
    for _ in range(8):
        states, actions = wide_states(n, gen).to(dtype), torch.randint(0, 2, (n,), generator=gen)
        env.state = states
        env.step(actions)
        assert torch.equal(env.state, dynamics(states, actions, scalar))


def test_default_physics_given_explicitly_are_the_default_env_bit_for_bit() -> None:
    """gymnasium's values given as options (9.8, 1.0, 0.1, 0.5, 10.0) make the env without options: the same
    states, observations and rewards bit for bit over 200 steps of random actions, autoresets included."""
    defaults = {"gravity": 9.8, "masscart": 1.0, "masspole": 0.1, "length": 0.5, "force_mag": 10.0}
    given, plain = CartPoleVectorEnv(16, **defaults), CartPoleVectorEnv(16)
    assert torch.equal(given.reset(seed=1)[0], plain.reset(seed=1)[0])
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        actions = torch.randint(0, 2, (16,), generator=gen)
        for ours, theirs in zip(given.step(actions), plain.step(actions), strict=True):
            assert torch.equal(ours, theirs) if isinstance(ours, torch.Tensor) else ours == theirs
        assert torch.equal(given.state, plain.state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ranges", [RANGES, {"length_range": [0.3, 0.9]}], ids=["all", "length"])
def test_env_n_with_drawn_physics_steps_exactly_as_one_env_made_with_its_values(
    dtype: torch.dtype, ranges: dict[str, list[float]], device: torch.device
) -> None:
    """Env n of a CartPole whose ranges drew its constants gives, for 100 steps from states over the whole state
    space and random actions, exactly the next state, observation, reward and termination of a one-env CartPole made
    with ``float(env.<constant>[n])`` as fixed options (bit for bit, float64 and float32; 37 envs, so that vectorized
    and remainder lanes are both compared; on the test device), and the draws differ between envs."""
    n, gen = 37, torch.Generator().manual_seed(0)
    env = CartPoleVectorEnv(n, dtype=dtype, device=device, **ranges)
    env.reset(seed=0)
    drawn = [name.removesuffix("_range") for name in ranges]
    for name in drawn:
        values = getattr(env, name)
        assert values.shape == (n,) and values.dtype == dtype and len(set(values.tolist())) == n
    values = [{name: float(getattr(env, name)[i]) for name in drawn} for i in range(n)]
    singles = [CartPoleVectorEnv(1, dtype=dtype, device=device, **physics) for physics in values]
    for single in singles:
        single.reset(seed=0)
    for _ in range(100):
        states, actions = wide_states(n, gen).to(device), torch.randint(0, 2, (n,), generator=gen).to(device)
        assert_each_env_steps_as_its_own(env, singles, states, actions)


def test_draws_are_a_pure_function_of_each_envs_seed(device: torch.device) -> None:
    """Env i of ``reset(seed=s)`` draws its constants from ``s + i`` alone: envs 4..7 of 8 (on the test device) get the
    draws and initial states of an env of 4 on the CPU reset with ``s + 4``; constant k's draw is
    ``low + (high - low) u``, u the uniform of SplitMix64 output ``state_dim + k + 1`` (after the state's: the initial
    states are those without ranges), the same whichever other constants are randomized."""
    eight = assert_draws_are_seed_functions(CartPoleVectorEnv, RANGES, device)
    length_only = CartPoleVectorEnv(8, device=device, length_range=RANGES["length_range"])
    length_only.reset(seed=21)
    assert torch.equal(length_only.length, eight.length) and length_only.masspole == 0.1


def test_resets_masks_autoresets_and_a_curriculum_keep_or_redraw_the_physics() -> None:
    """A ``reset_mask`` redraws the masked envs' constants alone; autoresets keep each episode's; a range set between
    resets (a curriculum) is the next reset's; set to None, the envs keep their last draws until the constant is
    assigned, and then step as the env made with it."""
    n = 5
    env = CartPoleVectorEnv(n, max_episode_steps=2, length_range=[0.4, 0.6], masspole_range=[0.1, 0.2])
    env.reset(seed=3)
    drawn = env.length.clone(), env.masspole.clone()
    mask = torch.tensor([True, False, True, False, False])
    env.reset(seed=100, options={"reset_mask": mask})
    for now, before in zip((env.length, env.masspole), drawn, strict=True):
        assert torch.equal(now[~mask], before[~mask]) and not torch.equal(now[mask], before[mask])
    drawn = env.length.clone()
    for _ in range(3):  # the time limit of 2 steps ends every episode; the third step autoresets them
        env.step(torch.zeros(n, dtype=torch.int64))
    assert torch.equal(env.length, drawn)
    env.length_range = (0.7, 0.7)
    env.reset(seed=3)
    assert env.length.tolist() == [0.7] * n
    env.length_range = env.masspole_range = None
    env.reset(seed=4)
    assert env.length.tolist() == [0.7] * n
    env.length, env.masspole = 0.5, 0.1
    plain = CartPoleVectorEnv(n, max_episode_steps=2)
    assert torch.equal(env.reset(seed=7)[0], plain.reset(seed=7)[0])
    action = torch.ones(n, dtype=torch.int64)
    assert torch.equal(env.step(action)[0], plain.step(action)[0]) and torch.equal(env.state, plain.state)


@pytest.mark.parametrize(
    ("make", "ranges"),
    [
        (
            lambda: CartPoleVectorEnv(6, length_range=[0.3, 0.9], force_mag_range=[5.0, 15.0]),
            {"length": (0.3, 0.9), "force_mag": (5.0, 15.0)},
        ),
        (lambda: envs.PendulumVectorEnv(num_envs=6, g_range=[8.0, 12.0]), {"g": (8.0, 12.0)}),
    ],
    ids=["cartpole", "pendulum"],
)
def test_a_reset_without_a_seed_draws_each_envs_physics_from_the_envs_generator(make: Any, ranges: dict) -> None:
    """``reset()`` without a seed draws every env's constants from the env's own generator (which ``reset(seed=s)``
    seeded), not torch's global one: two envs reset alike draw the same values, one per env, all different and in
    the ranges, and other than the seeded reset's (CartPole's options and Pendulum's ``g_range`` alike)."""
    pair = [make() for _ in range(2)]
    first = next(iter(ranges))
    for env in pair:
        env.reset(seed=5)
    seeded = getattr(pair[0], first).clone()
    for env in pair:
        torch.rand(1)  # the global generator moves between them: no draw may come from it
        env.reset()
    for name, (low, high) in ranges.items():
        drawn = getattr(pair[0], name)
        assert torch.equal(drawn, getattr(pair[1], name)) and len(set(drawn.tolist())) == 6
        assert bool(((drawn >= low) & (drawn <= high)).all())
    assert not torch.equal(getattr(pair[0], first), seeded)


def test_assigned_per_env_constants_are_the_envs_own_copy() -> None:
    """A tensor assigned as per-env constants is copied: changing it afterwards changes neither the env's values nor
    its steps (which would otherwise disagree with each other)."""
    given = torch.tensor([0.6, 0.7], dtype=torch.float64)
    env, reference = CartPoleVectorEnv(2), CartPoleVectorEnv(2)
    env.length, reference.length = given, [0.6, 0.7]
    given.fill_(5.0)
    assert env.length.tolist() == [0.6, 0.7]
    env.reset(seed=0)
    reference.reset(seed=0)
    action = torch.ones(2, dtype=torch.int64)
    assert torch.equal(env.step(action)[0], reference.step(action)[0])


def test_bad_physics_options_are_errors_naming_the_option_and_what_it_takes() -> None:
    """Values no CartPole can step with (a mass or length <= 0, a non-finite or non-number constant, a range that is
    not two increasing such numbers, N values of another length) and a constant given both fixed and as a range are
    errors whose whole message names the option, what it takes and the value given; through ``make_vector_env``
    (``--env-kwargs``) they are EnvOptionErrors carrying that message."""
    cases = [
        ({"length": 0.0}, "length must be a finite number > 0, got 0.0"),
        ({"masspole": -0.1}, "masspole must be a finite number > 0, got -0.1"),
        ({"gravity": float("inf")}, "gravity must be a finite number, got inf"),
        ({"force_mag": "10"}, "force_mag must be a number, got '10'"),
        ({"length_range": [0.6, 0.4]}, "length_range must be [low, high] with low <= high, got [0.6, 0.4]"),
        ({"masscart_range": [0.0, 1.0]}, "masscart_range's low must be a finite number > 0, got 0.0"),
        ({"length_range": 0.5}, "length_range must be [low, high], two numbers (or None for one length), got 0.5"),
        (
            {"length": 0.6, "length_range": [0.4, 0.6]},
            "length and length_range were both given: length_range draws each env's length at every reset; "
            "give length for one value or length_range to randomize it, not both",
        ),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            CartPoleVectorEnv(2, **options)
        with pytest.raises(EnvOptionError, match=re.escape(message)):
            make_vector_env("flipes/CartPole-v1", 2, note=None, **options)
    env = CartPoleVectorEnv(2)
    with pytest.raises(ValueError, match=re.escape("length must be one number or 2 numbers (one per env), got shape (3,)")):
        env.length = [0.5, 0.6, 0.7]
    with pytest.raises(ValueError, match=re.escape("masscart must be a finite number > 0 for every env, got 0.0 for env 1")):
        env.masscart = [1.0, 0.0]
    with pytest.raises(ValueError, match=re.escape("gravity must be a finite number for every env, got nan for env 1")):
        env.gravity = [9.8, float("nan")]


def test_a_training_run_with_a_range_is_reproducible(tmp_path: Path) -> None:
    """``flipes.train`` on flipes/CartPole-v1 with ``env_kwargs={"length_range": ..., "masspole_range": ...}`` twice gives
    the same rows (fitness, evaluation returns, timesteps, parameters' hash: all but the clock's), and other parameters
    than the run without the ranges."""
    run = {"env": "flipes/CartPole-v1", "popsize": 16, "generations": 3, "hidden": [8], "seed": 0, "eval_episodes": 4}
    run |= {"tensorboard": False, "plot": False, "progress": False, "target": None}
    options = {"length_range": [0.25, 1.0], "masspole_range": [0.05, 0.3]}
    rows = []
    for name, env_kwargs in (("a", options), ("b", options), ("plain", {})):
        flipes.train(env_kwargs=env_kwargs, out=str(tmp_path / name), **run)
        rows.append([{k: v for k, v in row.items() if k not in CLOCK} for row in metrics(tmp_path / name)])
    assert len(rows[0]) == 3 and "eval_return" in rows[0][0] and rows[0] == rows[1]
    assert [r["params_sha256"] for r in rows[0]] != [r["params_sha256"] for r in rows[2]]


def test_cartpole_declares_gymnasiums_constants_in_their_draw_order() -> None:
    """The randomizable constants are gymnasium's CartPoleEnv attributes with its defaults, in the order that fixes
    which SplitMix64 output each draws from."""
    ref = gym.make("CartPole-v1").unwrapped
    constants = envs.CartPoleVectorEnv.constants
    assert [c.name for c in constants] == ["gravity", "masscart", "masspole", "length", "force_mag"]
    assert [c.default for c in constants] == [getattr(ref, c.name) for c in constants]


def test_a_constant_needs_its_range_and_a_redeclared_one_keeps_its_draw_slot() -> None:
    """An env class declaring a Constant without ``<name>_range = Range(<name>)`` beside it is a TypeError naming the
    class, the constant and the declaration to add (rather than a KeyError at its first reset); a subclass that
    redeclares an inherited constant (another default) replaces it in ``constants``, in its place, so that every
    constant keeps the SplitMix64 output it draws from."""
    message = "Damped.damping is a Constant without its range: declare damping_range = Range(damping) in the same class"
    with pytest.raises(TypeError, match="^" + re.escape(message) + "$"):

        class Damped(envs.PendulumVectorEnv):
            damping = Constant(0.0)

    class Moon(CartPoleVectorEnv):
        gravity = Constant(1.62)
        gravity_range = Range(gravity)

    assert [c.name for c in Moon.constants] == [c.name for c in CartPoleVectorEnv.constants]
    assert Moon.constants[0] is Moon.gravity and Moon(2).gravity == 1.62
    ranges = {"gravity_range": [1.0, 2.0], "length_range": [0.3, 0.9]}
    moon, earth = Moon(4, **ranges), CartPoleVectorEnv(4, **ranges)
    moon.reset(seed=9)
    earth.reset(seed=9)
    assert torch.equal(moon.gravity, earth.gravity) and torch.equal(moon.length, earth.length)
