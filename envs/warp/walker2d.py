"""Walker2d-v5 on MuJoCo Warp: gymnasium's ``walker2d_v5.Walker2dEnv`` (Erez, Tassa & Todorov, 2011), batched.

Reward ``forward_reward_weight · ẋ + healthy_reward · healthy − ctrl_cost_weight · |a|²``; healthy
while the height ``qpos[1]`` lies in (0.8, 2) and the angle ``qpos[2]`` in (-1, 1), strict;
terminates when not healthy; observation ``qpos[1:]``, ``qvel`` clipped to ±10; initial qpos and
qvel uniform in ``init ± 0.005``. v5's own XML (``walker2d_v5.xml``: both feet with friction 1.9).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from envs.base import Device, real_option
from envs.warp.hopper import inside, planar_observation, planar_reward
from envs.warp.locomotion import LocomotionEnv, LocomotionVectorEnv, flag_option, range_option


class Walker2dVectorEnv(LocomotionVectorEnv):
    """``num_envs`` Walker2d-v5 envs; see :class:`~envs.warp.locomotion.LocomotionVectorEnv`.

    Args: gymnasium's (``healthy_z_range``, ...), with its defaults, and
    :class:`~envs.warp.locomotion.LocomotionVectorEnv`'s.

    Shape: observation ``(N, 17)`` (``(N, 18)`` with x), actions ``(N, 6)`` in [-1, 1].
    """

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 1000,
        device: Device = "cpu",
        xml_file: str = "walker2d_v5.xml",
        frame_skip: int = 4,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 1e-3,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.8, 2.0),
        healthy_angle_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 5e-3,
        exclude_current_positions_from_observation: bool = True,
        **kwargs: Any,
    ) -> None:
        self.forward_reward_weight = real_option("forward_reward_weight", forward_reward_weight)
        self.ctrl_cost_weight = real_option("ctrl_cost_weight", ctrl_cost_weight)
        self.healthy_reward = real_option("healthy_reward", healthy_reward)
        self.terminate_when_unhealthy = flag_option("terminate_when_unhealthy", terminate_when_unhealthy)
        self.healthy_z_range = range_option("healthy_z_range", healthy_z_range)
        self.healthy_angle_range = range_option("healthy_angle_range", healthy_angle_range)
        self.exclude_current_positions_from_observation = flag_option(
            "exclude_current_positions_from_observation", exclude_current_positions_from_observation
        )
        super().__init__(num_envs, max_episode_steps, device, xml_file, frame_skip, reset_noise_scale, False, **kwargs)

    def _observe_physics(self) -> Tensor:
        return planar_observation(self.physics, self.exclude_current_positions_from_observation)

    def _reward_healthy(self, velocity: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        qpos = self.physics.qpos
        healthy = inside(qpos[:, 1], self.healthy_z_range) & inside(qpos[:, 2], self.healthy_angle_range)
        return planar_reward(self, velocity, action, healthy)


class Walker2dEnv(LocomotionEnv):
    """One :class:`Walker2dVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = Walker2dVectorEnv
