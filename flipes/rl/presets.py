"""Per-env training defaults, like rl-baselines3-zoo's hyperparameter files.

``python scripts/train.py --env HalfCheetah-v5`` with no other flag trains with the row of
``HalfCheetah-v5`` below; ``--config`` files and flags override any of it. A row is keyed by the
env's name without a backend prefix, so ``envpool:Hopper-v5``, ``gymnasium:Hopper-v5`` and
``Hopper-v5`` share one, and ``flipes/CartPole-v1`` shares gymnasium's ``CartPole-v1``.

How the rows were found (2-core x86 VM, torch 2.13 CPU, EnvPool 1.2.5; README "Per-env defaults"):
``generations`` is a budget, not a tuned value; ``eval_every`` and ``eval_episodes`` keep the
center-policy evaluations under about a tenth of the wall time; ``target`` stops a run once the
center policy's mean evaluation return reaches it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from flipes.rl.envs import split_env_id

_CLASSIC = {"popsize": 64, "sigma": 0.1, "lr": 0.05, "hidden": [32, 32], "episodes": 1, "eval_every": 2, "eval_episodes": 100}
_MUJOCO = {"episodes": 1, "eval_episodes": 5, "hidden": [64, 64]}

PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        name: MappingProxyType(row)
        for name, row in {
            # classic control: flipes' torch envs and gymnasium's (EnvPool's when installed)
            "CartPole-v1": {**_CLASSIC, "generations": 300, "target": 475.0},
            "Acrobot-v1": {**_CLASSIC, "generations": 300, "target": -100.0},
            "MountainCarContinuous-v0": {**_CLASSIC, "generations": 300, "target": 90.0},
            # Pendulum sits on a plateau near -800 until a swing-up is found; a larger lr leaves it sooner
            "Pendulum-v1": {**_CLASSIC, "lr": 0.2, "generations": 2000, "target": -200.0},
            # MuJoCo locomotion (gymnasium v5 semantics; EnvPool's C++ envs when installed)
            "HalfCheetah-v5": {**_MUJOCO, "popsize": 128, "sigma": 0.02, "lr": 0.02, "eval_every": 2, "generations": 2000},
            # reward_shift: the alive bonus, left out of the fitness (ARS's shift; standing still is a local optimum)
            "Hopper-v5": {
                **_MUJOCO,
                "popsize": 128,
                "sigma": 0.02,
                "lr": 0.02,
                "eval_every": 2,
                "generations": 3000,
                "reward_shift": 1.0,
            },
            "Walker2d-v5": {
                **_MUJOCO,
                "popsize": 128,
                "sigma": 0.02,
                "lr": 0.02,
                "eval_every": 2,
                "generations": 3000,
                "reward_shift": 1.0,
            },
            "Ant-v5": {
                **_MUJOCO,
                "popsize": 128,
                "sigma": 0.02,
                "lr": 0.02,
                "eval_every": 2,
                "generations": 3000,
                "reward_shift": 1.0,
            },
            "Humanoid-v5": {
                **_MUJOCO,
                "popsize": 256,
                "sigma": 0.02,
                "lr": 0.02,
                "eval_every": 2,
                "generations": 5000,
                "reward_shift": 5.0,
            },
            "Swimmer-v5": {**_MUJOCO, "popsize": 64, "sigma": 0.05, "lr": 0.05, "eval_every": 2, "generations": 1000},
            "InvertedPendulum-v5": {
                **_MUJOCO,
                "popsize": 32,
                "sigma": 0.05,
                "lr": 0.05,
                "eval_every": 1,
                "generations": 300,
                "target": 950.0,  # gymnasium's reward_threshold
            },
        }.items()
    }
)


def preset_name(env_id: str) -> str:
    """The row key of an env id: no backend prefix, no ``flipes/`` namespace."""
    _, name = split_env_id(env_id)
    return name.removeprefix("envs:").removeprefix("flipes/")


def preset_for(env_id: str) -> dict[str, Any]:
    """The training defaults of ``env_id`` (a copy; empty for envs without a row)."""
    row = PRESETS.get(preset_name(env_id), {})
    return {k: list(v) if isinstance(v, list) else v for k, v in row.items()}
