"""Batched torch versions of gymnasium's envs, registered as ``flipes/<id>``.

Classic control (CartPole, Acrobot, Pendulum, MountainCarContinuous): each env is one pure
dynamics function of batched tensors, wrapped as a gymnasium ``VectorEnv`` that steps all copies
at once on the CPU or a GPU, and tested step for step against gymnasium. MuJoCo (HalfCheetah,
Hopper, Walker2d, Ant, Humanoid, v5): gymnasium's models stepped on MuJoCo Warp (``envs/warp/``,
``pip install 'flipes[warp]'``), which is imported only when one of them is made.

    import envs  # registers the ids (gymnasium >= 1.0 loads no plugins by itself)
    env = gymnasium.make_vec("flipes/CartPole-v1", num_envs=4096, device="cuda")
    env = gymnasium.make_vec("envs:flipes/CartPole-v1", num_envs=4096)  # the same, importing envs itself
    env = gymnasium.make("flipes/CartPole-v1")  # one copy, numpy in and out (for check_env and friends)
"""

from __future__ import annotations

from types import MappingProxyType

import gymnasium as gym

from envs.acrobot import AcrobotEnv, AcrobotVectorEnv
from envs.base import SingleEnv, TorchVectorEnv
from envs.cartpole import CartPoleEnv, CartPoleVectorEnv
from envs.mountain_car import MountainCarContinuousEnv, MountainCarContinuousVectorEnv
from envs.pendulum import PendulumEnv, PendulumVectorEnv

__all__ = [
    "AcrobotEnv",
    "AcrobotVectorEnv",
    "CartPoleEnv",
    "CartPoleVectorEnv",
    "MountainCarContinuousEnv",
    "MountainCarContinuousVectorEnv",
    "PendulumEnv",
    "PendulumVectorEnv",
    "SingleEnv",
    "TorchVectorEnv",
    "register_envs",
]

# id -> (module:class prefix, max_episode_steps, reward_threshold), as gymnasium registers the originals
_SPECS: MappingProxyType[str, tuple[str, int, float | None]] = MappingProxyType(
    {
        "flipes/CartPole-v1": ("envs.cartpole:CartPole", 500, 475.0),
        "flipes/Acrobot-v1": ("envs.acrobot:Acrobot", 500, -100.0),
        "flipes/Pendulum-v1": ("envs.pendulum:Pendulum", 200, None),
        "flipes/MountainCarContinuous-v0": ("envs.mountain_car:MountainCarContinuous", 999, 90.0),
        # MuJoCo on MuJoCo Warp: string entry points, so that warp and mujoco_warp load only when one is made
        "flipes/HalfCheetah-v5": ("envs.warp.half_cheetah:HalfCheetah", 1000, 4800.0),
        "flipes/Hopper-v5": ("envs.warp.hopper:Hopper", 1000, 3800.0),
        "flipes/Walker2d-v5": ("envs.warp.walker2d:Walker2d", 1000, None),
        "flipes/Ant-v5": ("envs.warp.ant:Ant", 1000, 6000.0),
        "flipes/Humanoid-v5": ("envs.warp.humanoid:Humanoid", 1000, None),
    }
)


def register_envs() -> None:
    """Register the ``flipes/`` ids with gymnasium; calling it again changes nothing.

    ``gymnasium.make`` gets the single env (with gymnasium's ``TimeLimit`` for the time limit),
    ``gymnasium.make_vec`` the vector env (which truncates itself after ``max_episode_steps``).
    """
    for env_id, (prefix, steps, threshold) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"{prefix}Env",
                vector_entry_point=f"{prefix}VectorEnv",
                max_episode_steps=steps,
                reward_threshold=threshold,
            )


register_envs()
