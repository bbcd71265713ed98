"""Per-env training defaults, like rl-baselines3-zoo's hyperparameter files.

``python scripts/train.py --env HalfCheetah-v5`` with no other flag trains with the row of
``HalfCheetah-v5`` below; ``--config`` files and flags override any of it. A row is keyed by the
env's name without a backend prefix, so ``envpool:Hopper-v5``, ``gymnasium:Hopper-v5`` and
``Hopper-v5`` share one, and ``flipes/CartPole-v1`` shares gymnasium's ``CartPole-v1``.

How the rows were found (2-core x86 VM, torch 2.13 CPU, EnvPool 1.2.5; README "Per-env defaults"):
``generations`` is a budget, not a tuned value; ``eval_every`` and ``eval_episodes`` keep the
center-policy evaluations under about a tenth of the wall time. A run stops once the center
policy's mean evaluation return reaches gymnasium's registered ``reward_threshold``, or the row's
``target`` where gymnasium has none (Pendulum).

A row may name the search it trains with (``"algo": "ars"``) and hold that search's own options under its
name (``"ars": {...}``): ``--env Hopper-v5`` alone then trains with ARS at the row's ARS options, while
``--env Hopper-v5 --algo openai-es`` trains with the row's shared options (its OpenAI-ES row) as before.
Layers, low to high: the row's shared options < ``ALGOS[algo]`` < the row's options for ``algo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from flipes.rl.envpool_vec import envpool_atari
from flipes.rl.envs import base_id

_CLASSIC = MappingProxyType(
    {"popsize": 64, "sigma": 0.1, "lr": 0.05, "hidden": [32, 32], "episodes": 1, "eval_every": 2, "eval_episodes": 100}
)


def _mujoco(popsize: int, sigma: float, lr: float, generations: int, **extra: Any) -> dict[str, Any]:
    return {"popsize": popsize, "sigma": sigma, "lr": lr, "hidden": [64, 64], "episodes": 1, "eval_every": 2,
            "eval_episodes": 5, "generations": generations, **extra}  # fmt: skip


PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        name: MappingProxyType({k: MappingProxyType(v) if isinstance(v, dict) else v for k, v in row.items()})
        for name, row in {
            # classic control: flipes' torch envs and gymnasium's (EnvPool's when installed)
            # (targets: gymnasium's registered reward_threshold, the TrainConfig default)
            "CartPole-v1": {**_CLASSIC, "generations": 300},
            "Acrobot-v1": {**_CLASSIC, "generations": 300},
            "MountainCarContinuous-v0": {**_CLASSIC, "generations": 300},
            # Pendulum sits on a plateau near -800 until a swing-up is found; a larger lr leaves it sooner.
            # gymnasium registers no threshold for it: -200 is the level the ES literature calls solved
            "Pendulum-v1": {**_CLASSIC, "lr": 0.2, "generations": 2000, "target": -200.0},
            # MuJoCo locomotion (gymnasium v5 semantics; EnvPool's C++ envs when installed).
            # HalfCheetah, seeds 0-2, env steps until the center return passed 1,500 / 5,000 (best by 9 M):
            # σ 0.03, lr 0.04 (this row): 1.9/0.9/1.2 M, -/5.0/7.8 M (4,592); σ 0.02, lr 0.03: 1.9/1.4/1.2 M,
            # 7.0/-/- M (4,277; 4,557); σ 0.02, lr 0.02: 2.2 M, - (4,060); popsize 64 (σ 0.02-0.03, lr 0.03-0.04)
            # passed 1,500 sooner (0.7-1.1 M) but stalled at 2,700-4,300 or collapsed; popsize 256, lr 0.04: 500.
            "HalfCheetah-v5": _mujoco(128, 0.03, 0.04, 2000),
            # reward_shift: the alive bonus, left out of the fitness (ARS's shift; standing still is a local
            # optimum). Hopper, seed 0: 1,386 after 1.4 M steps with it, 540 after 1.7 M without.
            # Hopper trains with ARS (Mania et al. 2018's Hopper row: 8 directions, top 4, α 0.01, ν 0.025; linear
            # policy). Center return, seeds 0/1/2, at 2 M and 3 M env steps (2026-12-05, BENCHMARKS.md "MuJoCo training"):
            # this row 2,374/2,517/3,064 and 2,964/2,558/3,141; the OpenAI-ES options above (--algo openai-es, the
            # row until then) 1,440/2,457/1,512 and 1,416/2,757/2,845: ahead on every seed at 2 M, on 2 of 3 at 3 M.
            # At 6 M (seeds 0/1): 3,140/2,646 against 1,459/3,394; seed 1's OpenAI-ES run passes ARS from ~4 M on.
            "Hopper-v5": {
                **_mujoco(128, 0.02, 0.02, 3000, reward_shift=1.0),
                "algo": "ars",
                "ars": {"popsize": 16, "ars_top": 4, "lr": 0.01, "sigma": 0.025, "eval_every": 10, "generations": 2000},
            },
            # Walker2d trains with ARS (16 directions, top 8, α 0.025, ν 0.02). Center return, seeds 0/1/2, at 2 M and
            # 3 M env steps: this row 930/1,585/2,869 and 1,773/1,843/3,388; the OpenAI-ES options (--algo openai-es)
            # 1,361/775/1 and 1,471/1,075/1 (seed 2 learned to fall at once). Also tried, seed 0, at 3-4 M steps:
            # the paper's Walker row (40 directions, top 30, α 0.025, ν 0.01) 429; Hopper's ARS options 613;
            # OpenAI-ES at σ 0.03, lr 0.04 35 (fell at once).
            "Walker2d-v5": {
                **_mujoco(128, 0.02, 0.02, 3000, reward_shift=1.0),
                "algo": "ars",
                "ars": {"popsize": 32, "ars_top": 8, "lr": 0.025, "sigma": 0.02, "eval_every": 5, "generations": 3000},
            },
            # Ant keeps no shift: with it, falling at once (fitness ~0) beats standing (minus the control
            # cost), and seed 0's center went from 940 to -34 within 10 min as the population learned to fall.
            # Tried against this row (2026-12-05, BENCHMARKS.md "Ant-v5: rows tried"), center return at 3 M env steps, seeds
            # 0/1/2: this row 813/800/749 (mean 787); ARS at the paper's Ant row (60 directions, top 20, α 0.015,
            # ν 0.025, no shift) 737/928/626 (mean 764): behind in the mean, ahead on seed 1 only (it still learns to
            # stand at 3 M, then rises: at 6 M 1,115/1,259/675, mean 1,016, against 867/798/1,152, mean 939).
            # Seed 0 only: that row with the shift fell at once (12 at 2 M); Walker2d's ARS options went below 0
            # (-255 at 2 M: the linear policy's action costs outweigh the alive bonus); --algo pgpe fell (275 at 3 M).
            "Ant-v5": _mujoco(128, 0.02, 0.02, 3000),
            "Humanoid-v5": _mujoco(256, 0.02, 0.02, 5000, reward_shift=5.0),
            "Swimmer-v5": _mujoco(64, 0.05, 0.05, 1000),
            "InvertedPendulum-v5": {**_mujoco(32, 0.05, 0.05, 300), "eval_every": 1},
        }.items()
    }
)


# EnvPool's Atari ids (Pong-v5, Breakout-v5, ...: (4, 84, 84) uint8 stacks of grey 84x84 frames, frame skip 4, 27,000 steps
# at most): the Nature-DQN CNN (OpenAI's ES paper's policy for Atari), without running observation normalization. σ and lr
# are untuned guesses (Adam at 0.01 as OpenAI's ES starter; its runs had thousands of episodes a generation, not 64); on
# 2 CPU cores a generation of 64 Pong episodes took 25 s on quiet cores, 42-176 s on loaded ones (BENCHMARKS.md "Atari");
# cut at 400 steps (--max-episode-steps 400) the population's fitness rose over 57 generations, seed 0.
# Evaluations are few and far apart: one Pong episode is about a thousand CNN steps. With the CNN's orthogonal init alone
# every member of Pong's generation 0 lost 21-0 (seed 0) and the ES step was zero; fitted to frames of random play
# (CNNPolicy.init_from_data, in build_model) the members differ from generation 0 (BENCHMARKS.md "Atari").
_ATARI = {"policy": "cnn", "hidden": [512], "popsize": 64, "sigma": 0.02, "lr": 0.01, "episodes": 1, "eval_every": 10,
          "eval_episodes": 5, "generations": 1000}  # fmt: skip
ATARI: MappingProxyType[str, Any] = MappingProxyType(_ATARI)


def env_row(env_id: str) -> Mapping[str, Any]:
    """``env_id``'s row: its own in :data:`PRESETS`, else :data:`ATARI` for EnvPool's Atari ids, else none (empty)."""
    name = base_id(env_id)
    row = PRESETS.get(name)
    if row is not None:
        return row
    return ATARI if envpool_atari(name) else MappingProxyType({})


# The fully connected widths a policy takes where the env's row was written for another kind of policy: the CNN's are
# the Nature DQN's 512; an MLP or GRU on a CNN row (EnvPool's Atari ids) gets TrainConfig's 32-32. The MLP and the GRU
# share a row's widths (--policy gru on a MuJoCo row keeps its 64-64).
POLICY_HIDDEN: MappingProxyType[str, tuple[int, ...]] = MappingProxyType({"cnn": (512,)})


def row_policy(env_id: str) -> str:
    """The policy ``env_id``'s row trains unless ``--policy`` names another (mlp where it names none)."""
    return env_row(env_id).get("policy", "mlp")


def policy_preset(policy: str, env_id: str = "") -> dict[str, Any]:
    """What ``policy`` sets over ``env_id``'s row: ``hidden`` where the row's widths were set for a CNN and ``policy``
    is not one, or the other way round (``--policy cnn``: [512]); nothing otherwise."""
    if "cnn" not in (policy, row_policy(env_id)) or policy == row_policy(env_id):
        return {}
    from flipes.config import TrainConfig

    return {"hidden": list(POLICY_HIDDEN.get(policy, TrainConfig().hidden))}


def _copy(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in row.items()}


def row_algo(env_id: str) -> str:
    """The search ``env_id``'s row trains with unless ``--algo`` names another (openai-es where it names none)."""
    return env_row(env_id).get("algo", "openai-es")


def preset_for(env_id: str, algo: str | None = None) -> dict[str, Any]:
    """The training defaults of ``env_id`` (a copy; empty for envs without a row) with the search ``algo`` (None:
    :func:`row_algo`): the row's shared options (``algo`` among them where the row names one), and the row's own
    options for that search over them. :func:`algo_preset` layers between the two."""
    row = env_row(env_id)
    algo = algo or row_algo(env_id)
    shared = {k: v for k, v in row.items() if k not in ALGOS}
    return _copy({**shared, **(row.get(algo, {}) if algo in ALGOS else {})})


# What each search algorithm sets on top of an env's row (flags override it). pgpe: σ adapts per layer
# (flipes.es.sigma) from the variation between 8 ε groups (every preset popsize is a multiple of 16),
# with ClipUp at max speed lr·√D/2 (flipes.search.clipup). ars: Mania et al. (2018)'s linear policy,
# step size α = 0.02 and ν = σ = 0.03.
ALGOS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        "openai-es": MappingProxyType({}),
        "pgpe": MappingProxyType({"sigma_lr": 0.2, "groups": 8}),
        "ars": MappingProxyType({"hidden": [], "lr": 0.02, "sigma": 0.03}),
    }
)


def algo_preset(algo: str, env_id: str = "") -> dict[str, Any]:
    """The options ``algo`` sets (a copy; empty for an unknown name, which validation reports), less those that
    ``env_id``'s row sets for that search (tuned for the env, they win): ``{**preset_for(env_id, algo),
    **algo_preset(algo, env_id)}`` is every layer of the presets."""
    own = env_row(env_id).get(algo, {}) if env_id and algo in ALGOS else {}
    return _copy({k: v for k, v in ALGOS.get(algo, {}).items() if k not in own})


def defaults(env_id: str, algo: str | None = None) -> dict[str, Any]:
    """Every preset layer of ``env_id`` trained with ``algo`` (None: the row's search), low to high: the row's shared
    options, ``ALGOS[algo]``, the row's own options for that search."""
    algo = algo or row_algo(env_id)
    return {**preset_for(env_id, algo), **algo_preset(algo, env_id)}
