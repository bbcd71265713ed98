"""HalfCheetah-v5 on MuJoCo Warp: gymnasium's ``half_cheetah_v5.HalfCheetahEnv`` (Wawrzyński, 2009), batched.

Reward ``forward_reward_weight · ẋ − ctrl_cost_weight · |a|²`` with ẋ the root's x velocity over a
step; never terminates; observation ``qpos[1:]`` (x left out), ``qvel``; initial qpos uniform in
``qpos0 ± 0.1``, qvel ``0.1 · N(0, 1)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from envs.base import Device, real_option
from envs.warp.locomotion import LocomotionEnv, LocomotionVectorEnv, flag_option


class HalfCheetahVectorEnv(LocomotionVectorEnv):
    """``num_envs`` HalfCheetah-v5 envs; see :class:`~envs.warp.locomotion.LocomotionVectorEnv`.

    Args: gymnasium's (``forward_reward_weight``, ...), with its defaults, and
    :class:`~envs.warp.locomotion.LocomotionVectorEnv`'s.

    Shape: observation ``(N, 17)`` (``(N, 18)`` with x), actions ``(N, 6)`` in [-1, 1].
    """

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 1000,
        device: Device = "cpu",
        xml_file: str = "half_cheetah.xml",
        frame_skip: int = 5,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool = True,
        **kwargs: Any,
    ) -> None:
        self.forward_reward_weight = real_option("forward_reward_weight", forward_reward_weight)
        self.ctrl_cost_weight = real_option("ctrl_cost_weight", ctrl_cost_weight)
        self.exclude_current_positions_from_observation = flag_option(
            "exclude_current_positions_from_observation", exclude_current_positions_from_observation
        )
        super().__init__(num_envs, max_episode_steps, device, xml_file, frame_skip, reset_noise_scale, True, **kwargs)

    def _observe_physics(self) -> Tensor:
        skip = int(self.exclude_current_positions_from_observation)
        return torch.cat((self.physics.qpos[:, skip:], self.physics.qvel), 1)

    def _reward_healthy(self, velocity: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        reward = self.forward_reward_weight * velocity[:, 0] - self.ctrl_cost_weight * action.square().sum(1)
        return reward, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)


class HalfCheetahEnv(LocomotionEnv):
    """One :class:`HalfCheetahVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = HalfCheetahVectorEnv
