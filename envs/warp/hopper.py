"""Hopper-v5 on MuJoCo Warp: gymnasium's ``hopper_v5.HopperEnv`` (Erez, Tassa & Todorov, 2011), batched.

Reward ``forward_reward_weight · ẋ + healthy_reward · healthy − ctrl_cost_weight · |a|²``; healthy
while every entry of ``(qpos[2:], qvel)`` lies in (-100, 100), the height ``qpos[1]`` in (0.7, ∞)
and the angle ``qpos[2]`` in (-0.2, 0.2), all strict; terminates when not healthy; observation
``qpos[1:]``, ``qvel`` clipped to ±10; initial qpos and qvel uniform in ``init ± 0.005``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from envs.base import Device, real_option
from envs.warp.locomotion import LocomotionEnv, LocomotionVectorEnv, flag_option, range_option
from envs.warp.physics import WarpPhysics

if TYPE_CHECKING:
    from envs.warp.walker2d import Walker2dVectorEnv


def inside(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    """``low < x < high``, strict as gymnasium's; NaN is outside."""
    return (x > bounds[0]) & (x < bounds[1])


def planar_observation(physics: WarpPhysics, exclude_x: bool) -> Tensor:
    """Hopper's and Walker2d's observation: ``qpos`` (without x when ``exclude_x``), ``qvel`` clipped to ±10."""
    return torch.cat((physics.qpos[:, int(exclude_x) :], physics.qvel.clamp(-10.0, 10.0)), 1)


def planar_reward(
    env: HopperVectorEnv | Walker2dVectorEnv, velocity: Tensor, action: Tensor, healthy: Tensor
) -> tuple[Tensor, Tensor]:
    """Hopper's and Walker2d's reward ``forward_reward_weight · ẋ + healthy_reward · healthy − ctrl_cost_weight · |a|²``
    and termination (not ``healthy``, where ``terminate_when_unhealthy``)."""
    reward = env.forward_reward_weight * velocity[:, 0] + env.healthy_reward * healthy
    reward = reward - env.ctrl_cost_weight * action.square().sum(1)
    return reward, ~healthy & env.terminate_when_unhealthy


class HopperVectorEnv(LocomotionVectorEnv):
    """``num_envs`` Hopper-v5 envs; see :class:`~envs.warp.locomotion.LocomotionVectorEnv`.

    Args: gymnasium's (``healthy_z_range``, ...), with its defaults, and
    :class:`~envs.warp.locomotion.LocomotionVectorEnv`'s.

    Shape: observation ``(N, 11)`` (``(N, 12)`` with x), actions ``(N, 3)`` in [-1, 1].
    """

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 1000,
        device: Device = "cpu",
        xml_file: str = "hopper.xml",
        frame_skip: int = 4,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 1e-3,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_state_range: tuple[float, float] = (-100.0, 100.0),
        healthy_z_range: tuple[float, float] = (0.7, float("inf")),
        healthy_angle_range: tuple[float, float] = (-0.2, 0.2),
        reset_noise_scale: float = 5e-3,
        exclude_current_positions_from_observation: bool = True,
        **kwargs: Any,
    ) -> None:
        self.forward_reward_weight = real_option("forward_reward_weight", forward_reward_weight)
        self.ctrl_cost_weight = real_option("ctrl_cost_weight", ctrl_cost_weight)
        self.healthy_reward = real_option("healthy_reward", healthy_reward)
        self.terminate_when_unhealthy = flag_option("terminate_when_unhealthy", terminate_when_unhealthy)
        self.healthy_state_range = range_option("healthy_state_range", healthy_state_range)
        self.healthy_z_range = range_option("healthy_z_range", healthy_z_range)
        self.healthy_angle_range = range_option("healthy_angle_range", healthy_angle_range)
        self.exclude_current_positions_from_observation = flag_option(
            "exclude_current_positions_from_observation", exclude_current_positions_from_observation
        )
        super().__init__(num_envs, max_episode_steps, device, xml_file, frame_skip, reset_noise_scale, False, **kwargs)

    def _observe_physics(self) -> Tensor:
        return planar_observation(self.physics, self.exclude_current_positions_from_observation)

    def _healthy(self) -> Tensor:
        qpos, qvel = self.physics.qpos, self.physics.qvel
        state = torch.cat((qpos[:, 2:], qvel), 1)
        return (
            inside(state, self.healthy_state_range).all(1)
            & inside(qpos[:, 1], self.healthy_z_range)
            & inside(qpos[:, 2], self.healthy_angle_range)
        )

    def _reward_healthy(self, velocity: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        return planar_reward(self, velocity, action, self._healthy())


class HopperEnv(LocomotionEnv):
    """One :class:`HopperVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = HopperVectorEnv
