"""envs/warp/: flipes' MuJoCo envs on MuJoCo Warp against gymnasium's v5 envs on MuJoCo C.

Two questions are kept apart. Does flipes turn the physics into gymnasium's observations, rewards,
terminations and resets? Checked exactly: gymnasium's own ``step`` code run on MuJoCo Warp's data.
Does MuJoCo Warp's physics (float32) agree with MuJoCo C's (float64)? Checked from identical
states within tolerances measured here. Then random-policy return statistics, seeding and reset
noise, graph replay, the lazy import, the error without MuJoCo Warp, and a short ES run.

Warp compiles its kernels on first use and caches them on disk (``warp.config.kernel_cache_dir``):
measured on 2 cores (another job on one of them), this file took 79 s with an empty cache and
49 s with a warm one, so about 30 s is compiling.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from helpers import reference_env

import envs  # noqa: F401  registers the flipes/ ids
from flipes.rl import EnvError, make_vector_env
from flipes.seeds import t_quantile

mujoco = pytest.importorskip("mujoco")
pytest.importorskip("mujoco_warp", reason="the MuJoCo Warp envs need pip install 'flipes[warp]'")

IDS = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5"]
FIELDS = ("qpos", "qvel", "xpos", "xipos", "cinert", "cvel", "qfrc_actuator", "cfrc_ext")  # what gymnasium reads


@pytest.fixture(scope="session")
def make() -> Iterator[Callable[..., gym.vector.VectorEnv]]:
    """``make(gym_id, num_envs, **kwargs)``: one env per arguments for the whole session (each test
    resets what it uses). Warp compiles a model's kernels once per process (from its disk cache
    after the first run); the envs themselves are cheap."""
    made: dict[tuple, gym.vector.VectorEnv] = {}

    def make(gym_id: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
        key = (gym_id, num_envs, *sorted(kwargs.items()))
        if key not in made:
            made[key] = gym.make_vec(f"flipes/{gym_id}", num_envs=num_envs, **kwargs)
        return made[key]

    yield make


def random_actions(env: gym.vector.VectorEnv, gen: torch.Generator, beyond: float = 1.0) -> torch.Tensor:
    """Uniform actions in the action box scaled by ``beyond`` (> 1 exercises MuJoCo's clamping)."""
    high = torch.as_tensor(env.single_action_space.high)
    return beyond * high * (2 * torch.rand(env.num_envs, high.numel(), generator=gen) - 1)


def start_wide(gym_id: str, env: gym.vector.VectorEnv, gen: torch.Generator) -> None:
    """Ant rarely ends an episode under random actions: half its envs start with the torso at
    0.85-1.1 m, where it leaves the healthy range (0.2-1 m) within a few steps."""
    if gym_id == "Ant-v5":
        state = env.state.clone()
        state[::2, 2] = 0.85 + 0.25 * torch.rand(env.num_envs // 2 + env.num_envs % 2, generator=gen)
        env.state = state


def snapshot(physics) -> dict[str, np.ndarray]:
    return {k: getattr(physics, k).cpu().numpy().astype(np.float64) for k in FIELDS}


def load(data, snap: dict[str, np.ndarray], i: int) -> None:
    for k in FIELDS:
        getattr(data, k)[:] = snap[k][i]


# Ant rarely ends an episode: once more with a narrower healthy range (0.6-1 m), given to both envs;
# and gymnasium's other keyword options, given to both envs
STEP_N, STEP_LIMIT = 8, 25  # the step-code test's env: tests of any env count reuse it (one Warp build per id)


def step_code_env(make: Callable[..., gym.vector.VectorEnv], gym_id: str) -> gym.vector.VectorEnv:
    """The env the step-code test builds for ``gym_id`` with gymnasium's default options (``STEP_N`` envs)."""
    return make(gym_id, STEP_N, max_episode_steps=STEP_LIMIT)


STEP_CODE_CASES = [
    *[(i, {}) for i in IDS],
    ("Ant-v5", {"healthy_z_range": (0.6, 1.0)}),
    ("Hopper-v5", {"terminate_when_unhealthy": False, "exclude_current_positions_from_observation": False}),
    ("Humanoid-v5", {"include_cinert_in_observation": False, "include_cfrc_ext_in_observation": False,
                     "forward_reward_weight": 2.0, "healthy_reward": 1.0}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("gym_id", "kwargs"), STEP_CODE_CASES, ids=[*IDS, "Ant-v5-narrow", "Hopper-v5-options", "Humanoid-v5-options"]
)
def test_gymnasium_step_code_on_warp_physics_gives_the_same_transitions(make, gym_id: str, kwargs: dict) -> None:
    """Observations, rewards, terminations, truncations and autoresets are gymnasium's own ``step``
    and ``reset`` code applied to MuJoCo Warp's data, with the default options and with others given
    to both envs (no termination, x observed, observation parts left out, reward weights): for each
    env, gymnasium's env is loaded with what MuJoCo Warp held before the step (stale kinematics
    included: gymnasium reads ``xpos`` and ``xipos`` as ``mj_step`` leaves them, from the last physics
    step's start) and its simulation is replaced by MuJoCo Warp's result. Exact up to float32
    rounding, checked to 10x what was measured: observations equal, rewards within 1.1e-6 (ours add
    in float32); reset observations against MuJoCo C's ``mj_forward`` of the same state within 1.4e-6
    (Humanoid's cinert, cvel)."""
    n, steps, limit = STEP_N, 40, STEP_LIMIT
    env = make(gym_id, n, max_episode_steps=limit, **kwargs)
    physics = env.physics
    ref = reference_env(gym_id, **kwargs).unwrapped
    data = ref.data
    posts: dict[str, dict[str, np.ndarray]] = {}
    real_step = physics.step

    def step_and_keep() -> None:  # the data right after the physics, before any reset reruns mj_forward
        real_step()
        posts["data"] = snapshot(physics)

    physics.step = step_and_keep
    try:
        gen = torch.Generator().manual_seed(0)
        env.reset(seed=0)
        start_wide(gym_id, env, gen)
        pre = snapshot(physics)
        pending = np.zeros(n, dtype=bool)  # ended last step: reset by this one
        length = np.zeros(n, dtype=int)
        counts = {"compared": 0, "terminated": 0, "truncated": 0, "resets": 0}
        for _ in range(steps):
            actions = random_actions(env, gen, beyond=1.2)
            obs, reward, terminated, truncated = (np.asarray(x) for x in env.step(actions)[:4])
            live = snapshot(physics)
            for i in range(n):
                if pending[i]:  # NEXT_STEP: gymnasium's reset (mj_resetData, set_state) from this env's new state
                    mujoco.mj_resetData(ref.model, data)
                    ref.set_state(live["qpos"][i], live["qvel"][i])
                    np.testing.assert_allclose(obs[i], ref._get_obs(), rtol=0, atol=1.4e-5)
                    assert reward[i] == 0 and not terminated[i] and not truncated[i]
                    length[i], counts["resets"] = 0, counts["resets"] + 1
                    continue
                load(data, pre, i)

                def simulate(ctrl: np.ndarray, frames: int, i: int = i) -> None:  # MuJoCo Warp's result instead
                    data.ctrl[:] = ctrl
                    load(data, posts["data"], i)

                ref._step_mujoco_simulation = simulate
                r_obs, r_reward, r_terminated, _, _ = ref.step(actions[i].numpy())
                length[i] += 1
                np.testing.assert_array_equal(obs[i], r_obs.astype(np.float32))
                np.testing.assert_allclose(reward[i], r_reward, rtol=0, atol=1.1e-5)
                assert terminated[i] == r_terminated and truncated[i] == (length[i] >= limit)
                counts["compared"] += 1
                counts["terminated"] += int(r_terminated)
                counts["truncated"] += int(truncated[i])
            restarted = pending
            pre = {k: np.where(restarted.reshape(-1, *[1] * (v.ndim - 1)), live[k], posts["data"][k]) for k, v in live.items()}
            pending = terminated | truncated
    finally:
        del physics.step
    assert counts["compared"] >= 200 and counts["resets"] >= 8, counts  # HalfCheetah: all by truncation
    if gym_id == "HalfCheetah-v5" or not kwargs.get("terminate_when_unhealthy", True):  # never terminate
        assert counts["terminated"] == 0, counts
    else:
        assert counts["terminated"] >= (3 if gym_id == "Ant-v5" and not kwargs else 8), counts


# ------------------------------------------------------------------------------------------------
# MuJoCo Warp's physics against MuJoCo C's

# Errors measured from identical states, per transition: max_j |ours - theirs| / (1 + |theirs|) over
# the observation, and the same for the reward; 14,400 transitions per model (physics_errors, 16 envs
# x 300 steps, seeds 0-2). Ant is compared with elliptic friction cones in both engines (see
# elliptic_ant_xml); Humanoid's XML asks MuJoCo C for PGS and MuJoCo Warp runs Newton (it has no PGS).
#                    observation: median  99.9%   max    | reward: 99.9%  max     | bound (obs, reward)
#   HalfCheetah-v5                1.4e-6  2.6e-4  1.8e-3 |         1.3e-5 2.5e-5  | 3e-3, 2e-4
#   Hopper-v5                     1.8e-7  1.9e-6  4.8e-3 |         1.5e-6 1.7e-4  | 2e-5, 2e-5
#   Walker2d-v5                   2.0e-6  6.3e-5  1.2e-4 |         5.8e-6 1.2e-5  | 1e-3, 1e-4
#   Ant-v5 (elliptic cones)       1.1e-6  2.5e-3  0.20   |         6.6e-6 1.4e-5  | 3e-2, 1e-4
#   Humanoid-v5                   5.4e-6  9.7e-4  0.052  |         2.9e-5 4.9e-4  | 1e-2, 3e-4
# The bounds are about 10x the 99.9th percentiles. Above them: HalfCheetah and Walker2d none, Hopper
# and Ant 1, Humanoid 4 of 14,400 transitions: a contact whose distance lies within float32 rounding of
# its margin is in one engine's constraint set and not in the other's (Hopper's: a foot contact at
# exactly its 0.002 margin), and that transition then differs by far more. The test allows such
# transitions up to OUTLIERS of those it compares.
PHYSICS_TOL = {
    "HalfCheetah-v5": (3e-3, 2e-4),
    "Hopper-v5": (2e-5, 2e-5),
    "Walker2d-v5": (1e-3, 1e-4),
    "Ant-v5": (3e-2, 1e-4),
    "Humanoid-v5": (1e-2, 3e-4),
}
OUTLIERS = 0.01


def elliptic_ant_xml(tmp_path: Path) -> str:
    """Ant with elliptic friction cones. gymnasium's Ant uses pyramidal ones, whose friction rows
    run along the contact frame's tangents; for a capsule on a plane MuJoCo C takes the capsule's
    axis as the first tangent always, MuJoCo Warp (and MJX) only while the axis is more than 30°
    from the plane's normal (MuJoCo Warp 4.0.0, ``collision_primitive_core.plane_capsule``), else
    a fixed axis. Ant's steep lower legs rotate the friction pyramid so, and its transitions differ
    from MuJoCo C's by up to 1.7 (relative, measured). An elliptic cone is round: the frame cannot
    matter, and MuJoCo Warp then matches MuJoCo C as closely as on the other models."""
    from envs.warp.physics import model_path

    xml = Path(model_path("ant.xml")).read_text()
    assert '<option integrator="RK4" timestep="0.01"/>' in xml
    path = tmp_path / "ant_elliptic.xml"
    path.write_text(xml.replace('timestep="0.01"/>', 'timestep="0.01" cone="elliptic"/>'))
    return str(path)


def distance_to_health_bound(gym_id: str, qpos: np.ndarray, qvel: np.ndarray) -> float:
    """How far gymnasium's state lies from the nearest bound of its healthy range."""
    z, angle = qpos[1], qpos[2]
    if gym_id == "Hopper-v5":
        state = np.abs(np.concatenate([qpos[2:], qvel]))
        return min(abs(z - 0.7), abs(abs(angle) - 0.2), float(np.min(np.abs(state - 100))))
    if gym_id == "Walker2d-v5":
        return min(abs(z - 0.8), abs(z - 2.0), abs(abs(angle) - 1.0))
    if gym_id == "Ant-v5":
        return min(abs(qpos[2] - 0.2), abs(qpos[2] - 1.0))
    if gym_id == "Humanoid-v5":
        return min(abs(qpos[2] - 1.0), abs(qpos[2] - 2.0))
    return math.inf


def physics_errors(env: gym.vector.VectorEnv, ref: gym.Env, gym_id: str, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Per transition, relative observation and reward errors of ``env`` against ``ref`` (gymnasium's,
    unwrapped), both stepped from the same qpos and qvel (set by ``set_state``, warm start zeroed)
    with the same action, along a trajectory of ``env`` with random actions."""
    n, nq = env.num_envs, ref.model.nq
    gen = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    start_wide(gym_id, env, gen)
    ended = np.zeros(n, dtype=bool)
    rows = []
    for _ in range(steps):
        if ended.any():
            env.reset(options={"reset_mask": torch.as_tensor(ended)})
        state = env.state.clone()
        env.state = state  # as set_state leaves MuJoCo C: kinematics fresh, warm start zero
        s = state.numpy().astype(np.float64)
        actions = random_actions(env, gen, beyond=1.2)
        obs, reward, terminated, truncated = (np.asarray(x) for x in env.step(actions)[:4])
        for i in range(n):
            ref.set_state(s[i, :nq], s[i, nq:])
            ref.data.qacc_warmstart[:] = 0
            r_obs, r_reward, r_terminated, _, _ = ref.step(actions[i].numpy())
            obs_err = np.max(np.abs(obs[i] - r_obs) / (1 + np.abs(r_obs)))
            near = distance_to_health_bound(gym_id, ref.data.qpos, ref.data.qvel)
            rows.append((obs_err, abs(reward[i] - r_reward) / (1 + abs(r_reward)), r_terminated, terminated[i], near))
        ended = terminated | truncated
    table = np.array(rows, dtype=np.float64)
    keys = ("obs", "reward", "ref_terminated", "terminated", "distance_to_bound")
    return {k: table[:, j] for j, k in enumerate(keys)}


@pytest.mark.parametrize("gym_id", IDS)
def test_warp_physics_matches_mujoco_c_within_measured_tolerances(make, gym_id: str, tmp_path: Path) -> None:
    """From identical qpos and qvel and the same actions, 384 transitions (16 envs x 24 steps, ended
    envs reset in between, terminations included) agree with gymnasium's env on MuJoCo C within
    the bounds measured (PHYSICS_TOL: about 10x the 99.9th percentile of 14,400 transitions), but for
    at most 1% (contacts at their activation threshold; measured: at most 4 in 14,400); terminations
    agree wherever the state is not within that tolerance of a bound (measured: everywhere)."""
    kwargs = {"xml_file": elliptic_ant_xml(tmp_path)} if gym_id == "Ant-v5" else {}
    env = gym.make_vec(f"flipes/{gym_id}", num_envs=16, **kwargs)
    ref = reference_env(gym_id, **kwargs).unwrapped
    err = physics_errors(env, ref, gym_id, steps=24, seed=1)
    obs_tol, reward_tol = PHYSICS_TOL[gym_id]
    outside = (err["obs"] > obs_tol) | (err["reward"] > reward_tol)
    assert len(outside) >= 200 and outside.mean() <= OUTLIERS, (err["obs"].max(), err["reward"].max(), outside.sum())
    disagree = err["terminated"] != err["ref_terminated"]
    assert (err["distance_to_bound"][disagree] < 10 * obs_tol).all()
    if gym_id != "HalfCheetah-v5":
        assert err["ref_terminated"].sum() >= 5, err["ref_terminated"].sum()


# ------------------------------------------------------------------------------------------------
# statistics, seeding, replay


def gymnasium_returns(gym_id: str, episodes: int, horizon: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    env = reference_env(gym_id, max_episode_steps=horizon)
    env.action_space.seed(seed)
    returns, lengths = [], []
    for k in range(episodes):
        env.reset(seed=seed + k)
        total, steps, done = 0.0, 0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            total, steps, done = total + r, steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return np.array(returns), np.array(lengths)


def warp_returns(env: gym.vector.VectorEnv, seed: int, per_world: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of the first ``per_world`` episodes of every world under uniform random actions: the first
    from ``reset(seed=seed)``, the next ones from the env's own autoresets (the step after an end restarts the world,
    its action ignored and its reward 0: not counted). A world that has played its episodes steps on uncounted."""
    gen = torch.Generator().manual_seed(seed)
    n = env.num_envs
    env.reset(seed=seed)
    returns = torch.zeros(n, per_world, dtype=torch.float64)
    lengths = torch.zeros(n, per_world, dtype=torch.int64)
    episode = torch.zeros(n, dtype=torch.int64)  # the episode each world plays
    restart = torch.zeros(n, dtype=torch.bool)  # its last step ended an episode: this one is the autoreset
    rows = torch.arange(n)
    while (episode < per_world).any():
        _, reward, terminated, truncated, _ = env.step(random_actions(env, gen))
        live = (episode < per_world) & ~restart
        at = (rows[live], episode[live])
        returns[at] += reward.double()[live]
        lengths[at] += 1
        restart = live & (terminated | truncated)
        episode += restart
    return returns.flatten().numpy(), lengths.flatten().numpy()


def welch_z(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))


# (episodes, horizon, episodes per world): HalfCheetah never ends and Ant often runs to the cut, so their episodes are
# cut at 200 steps. A vector env steps all its worlds until the longest episode ends, so one episode per world steps
# about 4x (Hopper: 128 worlds x its longest, 91 steps, for a mean of 23) the steps its episodes take; a few episodes per
# world in turn (Hopper, Walker2d: 8, Ant, Humanoid: 4) waste less (measured: 0.45x to 0.7x the world-steps)
STATS = {"HalfCheetah-v5": (64, 200, 1), "Hopper-v5": (128, 1000, 8), "Walker2d-v5": (128, 1000, 8), "Ant-v5": (64, 200, 4),
         "Humanoid-v5": (64, 1000, 4)}  # fmt: skip


@pytest.mark.parametrize("gym_id", IDS)
def test_random_policy_returns_and_lengths_match_gymnasiums(make, gym_id: str) -> None:
    """Uniform random actions from each env's own initial-state distribution (a world's first episode from a seeded
    reset, its next ones from its autoresets, each from a draw of its own: no two returns equal): mean episode return
    and mean episode length agree with gymnasium's by Welch's two-sample statistic, |t| below Student's t quantile for a
    false-alarm rate of 1e-4 at n - 1 degrees of freedom (Welch's are at least that: 4.15 at n = 64, 4.02 at 128), so
    at most 1e-3 over the 10 statistics; seeds fixed (z < 4 read as normal was 1.7e-4 each at n = 64, not 6e-5).
    Measured z: -1.4 to 1.7. No world overflowed MuJoCo Warp's per-world contact and constraint buffers (its sticky
    ``overflow`` flags). Ant too: its friction-frame deviation does not show at this power."""
    episodes, horizon, per_world = STATS[gym_id]
    env = make(gym_id, episodes // per_world, max_episode_steps=horizon)
    ours = warp_returns(env, seed=0, per_world=per_world)
    assert not env.physics.data.overflow.numpy().any()  # MuJoCo Warp's contact and constraint buffers sufficed
    assert len(set(ours[0].tolist())) == episodes  # every episode its own: an autoreset starts from a fresh draw
    theirs = gymnasium_returns(gym_id, episodes, horizon, seed=1000)
    for a, b, what in zip(ours, theirs, ("return", "length"), strict=True):
        if what == "length" and b.std() == 0:  # every episode ran to the horizon
            assert (a == horizon).all()
            continue
        assert abs(welch_z(a, b)) < t_quantile(1 - 1e-4 / 2, episodes - 1), (what, a.mean(), b.mean(), welch_z(a, b))


@pytest.mark.parametrize(("gym_id", "scale", "normal"), [("HalfCheetah-v5", 0.1, True), ("Hopper-v5", 5e-3, False)])
def test_reset_noise_follows_gymnasiums_distributions(make, gym_id: str, scale: float, normal: bool) -> None:
    """qpos = qpos0 + U(-s, s) for every env; qvel = s·N(0, 1) (HalfCheetah, Ant) or U(-s, s)
    (Hopper, Walker2d, Humanoid), whether drawn from per-env seeds or from the env's generator.
    4,096 envs: every qpos component covers its range, means lie within 5 standard errors of 0 (false
    alarm 6e-7 per check), and the variance of qpos (1/3 in units of s), the std of qvel (1) and its
    kurtosis (3 normal, 1.8 uniform) within 6.3 or more standard errors (< 3e-10 per check); seeds
    fixed; measured at most 0.18 of a bound. A qvel scale 3% off fails."""
    n = 4096
    env = make(gym_id, n)
    qpos0 = torch.as_tensor(env.physics.mj_model.qpos0, dtype=torch.float32)
    nq = qpos0.numel()
    for seed in (0, None):
        env.reset(seed=seed)
        dq, qvel = env.state[:, :nq] - qpos0, env.state[:, nq:].double()
        assert (dq.abs() <= scale * (1 + 1e-5)).all() and (dq.abs().amax(0) > 0.99 * scale).all()
        u = (dq.double() / scale).flatten()
        assert abs(u.mean()) < 5 / math.sqrt(3 * u.numel()) and abs(u.var() - 1 / 3) < 0.012
        z = (qvel / scale).flatten() if normal else (qvel / scale * math.sqrt(3)).flatten()  # unit variance
        kurtosis = float((z - z.mean()).pow(4).mean() / z.var().pow(2))
        assert abs(z.mean()) < 5 / math.sqrt(z.numel()) and abs(z.std() - 1) < 0.025
        assert abs(kurtosis - (3.0 if normal else 1.8)) < 0.16, kurtosis


@pytest.mark.parametrize("gym_id", ["HalfCheetah-v5", "Humanoid-v5"])
def test_seeds_reproduce_and_each_env_follows_its_own(make, gym_id: str) -> None:
    """The same seed gives the same observations; envs differ; env i's episode depends on seed[i]
    alone (a population split across processes draws the same episodes), steps included (3, within the time limit)."""
    whole, part = step_code_env(make, gym_id), make(gym_id, 2)
    obs, _ = whole.reset(seed=list(range(10, 10 + STEP_N)))
    assert torch.equal(part.reset(seed=[13, 14])[0], obs[3:5])
    assert torch.equal(whole.reset(seed=10)[0], obs)
    assert not torch.equal(obs[0], obs[1]) and not torch.equal(whole.reset(seed=10 + STEP_N)[0], obs)
    actions = random_actions(whole, torch.Generator().manual_seed(0))
    whole.reset(seed=10)
    part.reset(seed=[13, 14])
    for _ in range(3):
        a = whole.step(actions)[0]
        b = part.step(actions[3:5])[0]
        torch.testing.assert_close(a[3:5], b, rtol=0, atol=0)


# gymnasium's v5 defaults: reset_noise_scale, and whether qvel is normal (else uniform)
RESET_NOISE = {"HalfCheetah-v5": (0.1, True), "Hopper-v5": (5e-3, False), "Walker2d-v5": (5e-3, False), "Ant-v5": (0.1, True),
               "Humanoid-v5": (1e-2, False)}  # fmt: skip


@pytest.mark.parametrize("gym_id", IDS)
def test_seeded_reset_noise_is_the_documented_function_of_each_envs_seed(make, gym_id: str) -> None:
    """Reset with seed s puts env i at ``qpos0 ± scale`` (gymnasium's reset_noise_scale) by ``seeding.uniform(s + i)``'s
    first nq outputs, and its qvel at ``scale · seeding.normal(s + i, nv, skip=nq + nv)`` where gymnasium draws them
    normal (HalfCheetah, Ant), else uniform in ``±scale`` by the next nv outputs (within 1e-6, float32): the normal
    velocities come from the SplitMix64 outputs after the positions', never from the same ones."""
    from envs import seeding

    scale, normal = RESET_NOISE[gym_id]
    env = step_code_env(make, gym_id)
    env.reset(seed=4)
    nq, nv, seeds = env.nq, env.nv, torch.arange(4, 4 + STEP_N)
    qpos0 = torch.as_tensor(env.physics.mj_model.qpos0, dtype=torch.float64)
    u = seeding.uniform(seeds, nq + nv)
    qpos = qpos0 - scale + 2 * scale * u[:, :nq]
    qvel = scale * seeding.normal(seeds, nv, skip=nq + nv) if normal else -scale + 2 * scale * u[:, nq:]
    torch.testing.assert_close(env.state.double(), torch.cat((qpos, qvel), 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gym_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_replayed_graph_steps_exactly_as_launch_by_launch(gym_id: str) -> None:
    """The physics recorded once and replayed (``warp.ScopedCapture``) gives bit-identical results to
    launching every kernel from Python (Euler for HalfCheetah, RK4 for Hopper), autoresets included."""
    envs_ = [gym.make_vec(f"flipes/{gym_id}", num_envs=4, max_episode_steps=7, capture=c) for c in (True, False)]
    assert envs_[0].physics._step_graph is not None and envs_[1].physics._step_graph is None
    outs = []
    for env in envs_:
        gen = torch.Generator().manual_seed(0)
        out = [env.reset(seed=0)[0]]
        out += [t for _ in range(10) for t in env.step(random_actions(env, gen))[:4]]
        outs.append(out)
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))


def test_time_limit_and_autoreset_follow_next_step(make) -> None:
    """After the step that truncates (elapsed reaches max_episode_steps), the next step ignores its
    action and returns the reset observation with reward 0, both flags False and elapsed 0."""
    env = make("HalfCheetah-v5", 2, max_episode_steps=3)
    env.reset(seed=0)
    actions = torch.ones(2, 6)
    flags = [env.step(actions)[3].tolist() for _ in range(3)]
    assert flags == [[False, False], [False, False], [True, True]]
    obs, reward, terminated, truncated, _ = env.step(actions)
    assert reward.eq(0).all() and not terminated.any() and not truncated.any() and env.elapsed.eq(0).all()
    torch.testing.assert_close(obs, env.state[:, 1:], rtol=0, atol=0)  # the fresh state's observation (x left out)
    assert (env.state[:, :9] - torch.as_tensor(env.physics.mj_model.qpos0)).abs().max() <= 0.1  # within the reset noise
    assert env.step(actions)[1].ne(0).all()  # and the episode goes on from there


@pytest.mark.parametrize("gym_id", IDS)
def test_every_option_of_gymnasiums_env_is_taken_with_gymnasiums_default(gym_id: str) -> None:
    """Each Warp env takes every keyword option of gymnasium's v5 env (its camera's aside: nothing renders) with
    gymnasium's default: the healthy ranges, cost weights, frame skip and reset noise the env runs with by default."""
    import inspect

    from gymnasium.envs.registration import load_env_creator

    ours = inspect.signature(load_env_creator(gym.spec(f"flipes/{gym_id}").vector_entry_point)).parameters
    theirs = inspect.signature(load_env_creator(gym.spec(gym_id).entry_point)).parameters
    options = [k for k in theirs if k not in ("self", "default_camera_config", "kwargs")]
    assert len(options) >= 6 and all(k in ours for k in options), [k for k in options if k not in ours]
    assert {k: ours[k].default for k in options} == {k: theirs[k].default for k in options}


def test_healthy_ranges_are_strict_as_gymnasiums() -> None:
    """Hopper's, Walker2d's and Humanoid's healthy ranges are open intervals, as gymnasium's ``low < x < high``: a value
    exactly on a bound is unhealthy, one float32 inside is healthy; NaN is unhealthy."""
    from envs.warp.hopper import inside

    x = torch.tensor(
        [
            0.7,
            2.0,
            float(np.nextafter(np.float32(0.7), np.float32(1))),
            float(np.nextafter(np.float32(2), np.float32(0))),
            math.nan,
        ]
    )
    assert inside(x, (0.7, 2.0)).tolist() == [False, False, True, True, False]


def test_single_env_passes_gymnasiums_check_env() -> None:
    """``gymnasium.make`` gives one env as a numpy ``gymnasium.Env`` that ``check_env`` accepts."""
    env = gym.make("flipes/Hopper-v5")
    assert env.spec.max_episode_steps == 1000 and env.spec.reward_threshold == 3800.0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(not|different|non-deterministic|share).*")
        warnings.filterwarnings("ignore", message=".*(infinity|symmetric and normalized|unwrapped).*")
        check_env(env.unwrapped)


# ------------------------------------------------------------------------------------------------
# import, errors, devices, training


def test_importing_envs_loads_no_warp_until_a_mujoco_id_is_made(tmp_path_factory: pytest.TempPathFactory) -> None:
    """In a fresh process, ``import envs`` and the classic-control ids import neither warp, mujoco_warp nor mujoco; a
    MuJoCo id's string entry point, loaded as ``make_vec`` loads it, imports them (building the env itself, a second of
    Warp's set-up, adds nothing to what is imported). The process is test_packaging_import_state's, shared."""
    from helpers import fresh_import_probe

    out = fresh_import_probe(tmp_path_factory)
    assert (out["loaded"], out["classic_id_loaded"], out["mujoco_id_loaded"]) == ([], [], ["mujoco", "mujoco_warp", "warp"])


def test_missing_mujoco_warp_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MuJoCo Warp, making a MuJoCo id raises gymnasium's DependencyNotInstalled naming
    ``pip install 'flipes[warp]'``; flipes' env maker passes that on instead of 'unknown env id'."""
    for name in ("envs.warp.physics", "envs.warp.locomotion", "envs.warp.ant"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "mujoco_warp", None)  # import mujoco_warp now raises ImportError
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"pip install 'flipes\[warp\]'"):
        gym.make_vec("flipes/Ant-v5", num_envs=2)
    with pytest.raises(EnvError, match=r"flipes/Ant-v5.*pip install 'flipes\[warp\]'"):
        make_vector_env("flipes/Ant-v5", 2)


@pytest.mark.parametrize("num_envs", [0, 2.0, "4", True])
def test_an_env_count_that_is_no_positive_integer_is_refused_before_the_physics_is_built(num_envs: object) -> None:
    """num_envs 0, 2.0, "4" or True is refused in the words of the classic envs, before MuJoCo Warp is asked for a
    model of that many worlds (2.0 and True were taken as 2 and 1, "4" failed inside the physics)."""
    with pytest.raises(ValueError, match=re.escape(f"num_envs must be an integer of at least 1, got {num_envs!r}")):
        gym.make_vec("flipes/HalfCheetah-v5", num_envs=num_envs)


def test_numpy_integer_counts_build_the_env_as_python_ints_do() -> None:
    """``num_envs`` and ``frame_skip`` of a numpy integer type (a count computed with numpy) give the env that Python
    ints give: num_envs=np.int64(2) failed inside Warp ("'numpy.int64' object is not iterable") and frame_skip=np.int64(4)
    was refused as no positive integer."""
    ours = gym.make_vec("flipes/Hopper-v5", num_envs=np.int64(2), frame_skip=np.int32(4))
    plain = gym.make_vec("flipes/Hopper-v5", num_envs=2, frame_skip=4)
    assert ours.num_envs == 2 and ours.dt == plain.dt
    actions = torch.full((2, 3), -0.5)
    assert torch.equal(ours.reset(seed=3)[0], plain.reset(seed=3)[0])
    for x, y in zip(ours.step(actions)[:4], plain.step(actions)[:4], strict=True):
        assert torch.equal(x, y)


def test_bad_actions_and_states_raise_a_value_error_naming_the_shape(make) -> None:
    """Actions and states of the wrong shape are refused with the shape expected; nothing reaches
    MuJoCo Warp's arrays."""
    env = make("HalfCheetah-v5", 4)
    env.reset(seed=0)
    before = env.state.clone()
    with pytest.raises(ValueError, match=r"shape \(4, 6\).*got shape \(4, 5\)"):
        env.step(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"state must have shape \(4, 18\), got \(4, 17\)"):
        env.state = torch.zeros(4, 17)
    assert torch.equal(env.state, before)


def test_a_cuda_device_without_an_index_means_torchs_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warp finds CUDA devices by index (``cuda_devices[None]`` fails): ``"cuda"`` becomes torch's
    current CUDA device; other devices stay as given."""
    from envs.warp.physics import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_cuda_device_where_torch_has_none_is_refused_naming_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``device="cuda"`` where torch sees no CUDA device (a CPU build of torch) is a RuntimeError naming
    ``device='cpu'``, not torch's bare AssertionError from asking for the current CUDA device."""
    from envs.warp.physics import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(RuntimeError, match=r"torch .* sees no CUDA device; use device='cpu'"):
            resolve_device(device)
    assert resolve_device("cpu") == torch.device("cpu")


BAD_OPTIONS = [
    ("Hopper-v5", {"healthy_z_range": 0.7}, r"healthy_z_range must be a pair \(low, high\) of numbers, got 0\.7"),
    ("Hopper-v5", {"healthy_angle_range": [-0.2]}, r"healthy_angle_range must be a pair"),
    ("Hopper-v5", {"healthy_state_range": [100, -100]}, r"healthy_state_range must be a pair \(low, high\) with low <= high"),
    ("Walker2d-v5", {"healthy_z_range": [0.8, None]}, r"healthy_z_range must be .*; for no bound give one out of reach \(1e9\)"),
    ("Humanoid-v5", {"healthy_z_range": "1, 2"}, r"healthy_z_range must be a pair"),
    ("Ant-v5", {"contact_force_range": [1.0, -1.0]}, r"contact_force_range must be a pair \(low, high\) with low <= high"),
    ("Hopper-v5", {"terminate_when_unhealthy": "false"}, r"terminate_when_unhealthy must be true or false, got 'false'"),
    ("HalfCheetah-v5", {"exclude_current_positions_from_observation": "no"}, r"exclude_current_.* true or false"),
    ("Humanoid-v5", {"include_cvel_in_observation": 0}, r"include_cvel_in_observation must be true or false, got 0"),
    ("Ant-v5", {"include_cfrc_ext_in_observation": "no"}, r"include_cfrc_ext_in_observation must be true or false"),
    ("HalfCheetah-v5", {"capture": "false"}, r"capture must be true or false, got 'false'"),
    ("Ant-v5", {"main_body": "nobody"}, r"main_body must be a body's name or index \(0 \.\.\. 13\) in ant\.xml, got 'nobody'"),
    ("Ant-v5", {"main_body": 14}, r"main_body .*, got 14; its bodies: world, torso, front_left_leg, aux_1, front"),
]  # fmt: skip


def test_cpu_with_an_index_is_warps_cpu_and_other_device_types_are_refused() -> None:
    """torch's ``"cpu:0"`` (Warp knows only ``"cpu"``: "Invalid device identifier") steps as ``"cpu"`` does, with the
    same transitions; a device type Warp lacks (``"meta"``) is a ValueError naming the two it has."""
    from envs.warp.physics import resolve_device

    assert resolve_device("cpu:0") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'cuda\[:k\]', got 'meta'"):
        resolve_device("meta")
    indexed, plain = (gym.make_vec("flipes/Hopper-v5", num_envs=2, device=d) for d in ("cpu:0", "cpu"))
    actions = torch.full((2, 3), 0.5)
    for env in (indexed, plain):
        env.reset(seed=0)
    for _ in range(3):
        for x, y in zip(indexed.step(actions)[:4], plain.step(actions)[:4], strict=True):
            assert torch.equal(x, y) and x.device == torch.device("cpu")


@pytest.mark.parametrize(("gym_id", "kwargs", "match"), BAD_OPTIONS, ids=[f"{i}-{next(iter(k))}" for i, k, _ in BAD_OPTIONS])
def test_option_values_a_step_would_fail_on_are_refused_when_the_env_is_made(
    gym_id: str, kwargs: dict, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range that is no (low, high) pair of numbers with low <= high, a switch that is no bool (the string
    "false" is truthy) and a main body the model lacks are ValueErrors naming the option when the env is made, before
    MuJoCo Warp builds (and perhaps compiles) the physics: they failed with a bare TypeError or KeyError at the first
    step, or (a reversed range) ended every episode at once."""
    import envs.warp.locomotion

    def no_physics(*args: object, **kwargs: object) -> None:
        raise AssertionError("the physics was built before the options were checked")

    monkeypatch.setattr(envs.warp.locomotion, "WarpPhysics", no_physics)
    with pytest.raises(ValueError, match=match):
        gym.make_vec(f"flipes/{gym_id}", num_envs=1, **kwargs)


def test_a_clip_range_takes_none_as_no_bound_as_gymnasiums_np_clip() -> None:
    """Ant's ``contact_force_range`` and Humanoid's ``contact_cost_range`` are np.clip bounds in gymnasium, where
    ``None`` is no bound (JSON has no infinity); the healthy ranges, compared with ``<``, take no ``None``."""
    from envs.warp.locomotion import range_option

    assert range_option("contact_cost_range", [0, None], unbounded=True) == (0.0, math.inf)
    assert range_option("contact_force_range", (None, 1), unbounded=True) == (-math.inf, 1.0)
    assert range_option("healthy_z_range", np.array([0.7, np.inf])) == (0.7, math.inf)
    with pytest.raises(ValueError, match=r"healthy_z_range must be a pair \(low, high\) of numbers, got \[None, 2\.0\]; for no"):
        range_option("healthy_z_range", [None, 2.0])


def test_warp_env_stays_on_the_device_and_matches_the_cpu(make, device: torch.device) -> None:
    """On ``device`` (FLIPES_TEST_DEVICE; scripts/gpu_check.py runs this on CUDA): every returned
    tensor is there, and single steps from the CPU env's states agree with the CPU's physics within
    the tolerances above (but for 1%); 40 steps with autoresets stay finite."""
    gym_id, n = "Hopper-v5", 32
    cpu = make(gym_id, n, max_episode_steps=10)
    env = gym.make_vec(f"flipes/{gym_id}", num_envs=n, device=device, max_episode_steps=10)
    obs, _ = env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    tensors = [obs, env.state, env.elapsed]
    cpu.reset(seed=0)
    obs_tol, reward_tol = PHYSICS_TOL[gym_id]
    errors = []
    for _ in range(40):
        state, actions = cpu.state.clone(), random_actions(cpu, gen)
        cpu.state, env.state = state, state.to(device)
        ours = env.step(actions.to(device))[:4]
        theirs = cpu.step(actions)[:4]
        tensors += ours
        errors.append(((ours[0].cpu() - theirs[0]).abs() / (1 + theirs[0].abs())).amax(1) > obs_tol)
        errors.append((ours[1].cpu() - theirs[1]).abs() / (1 + theirs[1].abs()) > reward_tol)
    assert torch.cat(errors).float().mean() <= OUTLIERS
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        tensors += env.step(random_actions(env, gen).to(device))[:4]
    assert all(t.device.type == torch.device(device).type for t in tensors)
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_es_raises_the_center_return_on_half_cheetah() -> None:
    """FlipES with a linear policy on flipes/HalfCheetah-v5 (episodes cut at 100 steps, popsize 32,
    15 generations, seed 0) raises the center policy's mean return over 16 fixed episodes by more
    than 90. Measured with seeds 0-2: +146, +121, +210 (from -48, -57, -162); with each generation's fitness
    shuffled among its members (no signal, the observation statistics still updated): +24, +29, +158, so at seed 0
    the bar tells learning from the normalization's drift (at seed 2 it would not)."""
    import flipes
    from flipes.rl import MLPPolicy, RolloutFitness, run_episodes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a busy machine makes a thread pool wait milliseconds per op
    try:
        torch.manual_seed(0)
        env = make_vector_env("flipes/HalfCheetah-v5", 32, max_episode_steps=100)
        evaluation = make_vector_env("flipes/HalfCheetah-v5", 16, max_episode_steps=100)
        policy = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=())
        es = flipes.FlipES(policy, popsize=32, sigma=0.05, lr=0.05, seed=0)
        fitness = RolloutFitness(env, seed=0, obs_norm=policy.obs_norm)

        def center() -> float:
            return run_episodes(evaluation, policy, seed=12_345).returns.mean().item()

        before = center()
        for _ in range(15):
            with es.population() as pop:
                f = fitness(policy, pop)
            es.tell(f)
            policy.obs_norm.update()
        after = center()
    finally:
        torch.set_num_threads(threads)
    assert after > before + 90, (before, after)


def test_loading_half_cheetah_says_nothing_of_gymnasiums_deprecated_settotalmass(capfd: pytest.CaptureFixture) -> None:
    """gymnasium's half_cheetah.xml makes MuJoCo print a deprecation note at every load (twice a command); the
    Warp physics loads it without that line on stdout or stderr, and without a warning."""
    from envs.warp.physics import WarpPhysics

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WarpPhysics("half_cheetah.xml", 2, 5, "cpu", capture=False)
    out, err = capfd.readouterr()
    assert "settotalmass" not in out + err


def test_bench_warp_refuses_an_empty_env_list_before_timing() -> None:
    """``scripts/bench_warp.py --envs`` with no id is a UsageError naming ``--envs`` (it printed an empty table and
    exited 0)."""
    from helpers import load_script

    from flipes.errors import UsageError

    bench = load_script(Path(__file__).parents[1] / "scripts" / "bench_warp.py")
    with pytest.raises(UsageError, match="names no env"):
        bench.check(bench.Args(envs=[]))
    bench.check(bench.Args(envs=["Hopper-v5"]))  # a valid list passes
