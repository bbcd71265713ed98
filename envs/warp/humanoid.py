"""Humanoid-v5 on MuJoCo Warp: gymnasium's ``humanoid_v5.HumanoidEnv`` (Tassa, Erez & Todorov, 2012), batched.

Reward ``forward_reward_weight · ẋ + healthy_reward · healthy − ctrl_cost_weight · |ctrl|² −
clip(contact_cost_weight · |cfrc_ext|², -∞, 10)``, ẋ the x velocity of the center of mass of
``xipos`` (which ``mj_step`` leaves at the last physics step's start, as gymnasium reads it); healthy
while ``qpos[2]`` lies in (1, 2), strict; terminates when not healthy; observation ``qpos[2:]``,
``qvel``, then ``cinert``, ``cvel``, ``cfrc_ext`` of every body but the world and
``qfrc_actuator[6:]`` (v5's defaults include all four); initial qpos and qvel uniform in
``init ± 0.01``.

The one difference from gymnasium: its XML asks for MuJoCo's PGS solver, which MuJoCo Warp lacks;
the Newton solver solves the same constraint problem (to its tolerance, not PGS's 50 iterations).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from envs.base import Device, real_option
from envs.warp.hopper import inside
from envs.warp.locomotion import LocomotionEnv, LocomotionVectorEnv, flag_option, range_option


class HumanoidVectorEnv(LocomotionVectorEnv):
    """``num_envs`` Humanoid-v5 envs; see :class:`~envs.warp.locomotion.LocomotionVectorEnv`.

    Args: gymnasium's (``include_cinert_in_observation``, ...), with its defaults, and
    :class:`~envs.warp.locomotion.LocomotionVectorEnv`'s.

    Shape: observation ``(N, 348)`` = 22 qpos, 23 qvel, 13 × 10 cinert, 13 × 6 cvel, 17
    qfrc_actuator, 13 × 6 cfrc_ext; actions ``(N, 17)`` in [-0.4, 0.4].
    """

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 1000,
        device: Device = "cpu",
        xml_file: str = "humanoid.xml",
        frame_skip: int = 5,
        forward_reward_weight: float = 1.25,
        ctrl_cost_weight: float = 0.1,
        contact_cost_weight: float = 5e-7,
        contact_cost_range: tuple[float, float] = (-float("inf"), 10.0),
        healthy_reward: float = 5.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (1.0, 2.0),
        reset_noise_scale: float = 1e-2,
        exclude_current_positions_from_observation: bool = True,
        include_cinert_in_observation: bool = True,
        include_cvel_in_observation: bool = True,
        include_qfrc_actuator_in_observation: bool = True,
        include_cfrc_ext_in_observation: bool = True,
        **kwargs: Any,
    ) -> None:
        self.forward_reward_weight = real_option("forward_reward_weight", forward_reward_weight)
        self.ctrl_cost_weight = real_option("ctrl_cost_weight", ctrl_cost_weight)
        self.contact_cost_weight = real_option("contact_cost_weight", contact_cost_weight)
        self.contact_cost_range = range_option("contact_cost_range", contact_cost_range, unbounded=True)
        self.healthy_reward = real_option("healthy_reward", healthy_reward)
        self.terminate_when_unhealthy = flag_option("terminate_when_unhealthy", terminate_when_unhealthy)
        self.healthy_z_range = range_option("healthy_z_range", healthy_z_range)
        self.exclude_current_positions_from_observation = flag_option(
            "exclude_current_positions_from_observation", exclude_current_positions_from_observation
        )
        self.include = (
            flag_option("include_cinert_in_observation", include_cinert_in_observation),
            flag_option("include_cvel_in_observation", include_cvel_in_observation),
            flag_option("include_qfrc_actuator_in_observation", include_qfrc_actuator_in_observation),
            flag_option("include_cfrc_ext_in_observation", include_cfrc_ext_in_observation),
        )
        super().__init__(num_envs, max_episode_steps, device, xml_file, frame_skip, reset_noise_scale, False, **kwargs)

    def _position(self) -> Tensor:
        """The center of mass's x, y: gymnasium's ``mass_center``."""
        mass = self.physics.body_mass
        return (mass[:, None] * self.physics.xipos).sum(1)[:, :2] / mass.sum()

    def _observe_physics(self) -> Tensor:
        p = self.physics
        parts = [p.qpos[:, 2 * self.exclude_current_positions_from_observation :], p.qvel]
        extras = (p.cinert[:, 1:].flatten(1), p.cvel[:, 1:].flatten(1), p.qfrc_actuator[:, 6:], p.cfrc_ext[:, 1:].flatten(1))
        parts += [x for x, wanted in zip(extras, self.include, strict=True) if wanted]
        return torch.cat(parts, 1)

    def _reward_healthy(self, velocity: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        p = self.physics
        healthy = inside(p.qpos[:, 2], self.healthy_z_range)
        contact_cost = (self.contact_cost_weight * p.cfrc_ext.square().sum((1, 2))).clamp(*self.contact_cost_range)
        reward = self.forward_reward_weight * velocity[:, 0] + self.healthy_reward * healthy
        reward = reward - self.ctrl_cost_weight * p.ctrl.square().sum(1) - contact_cost
        return reward, ~healthy & self.terminate_when_unhealthy


class HumanoidEnv(LocomotionEnv):
    """One :class:`HumanoidVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = HumanoidVectorEnv
