"""Ant-v5 on MuJoCo Warp: gymnasium's ``ant_v5.AntEnv`` (Schulman, Moritz, Levine, Jordan & Abbeel, 2016), batched.

Reward ``forward_reward_weight · ẋ + healthy_reward · healthy − ctrl_cost_weight · |a|² −
contact_cost_weight · |clip(cfrc_ext, ±1)|²``, ẋ the torso's x velocity (of ``xpos``, which
``mj_step`` leaves at the last physics step's start, as gymnasium reads it); healthy while the state is
finite and the torso's height lies in [0.2, 1] (inclusive); terminates when not healthy;
observation ``qpos[2:]``, ``qvel`` and the clipped ``cfrc_ext`` of every body but the world
(v5's default ``include_cfrc_ext_in_observation=True``); initial qpos uniform in ``qpos0 ± 0.1``,
qvel ``0.1 · N(0, 1)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from envs.base import Device, real_option
from envs.warp.locomotion import LocomotionEnv, LocomotionVectorEnv, flag_option, range_option
from envs.warp.physics import load_model

if TYPE_CHECKING:
    import mujoco


def body_id(model: mujoco.MjModel, body: int | str, xml_file: str) -> int:
    """The index of ``body`` (a name or an index) in ``model``; a ValueError listing the bodies where it has none
    (gymnasium looks ``main_body`` up at every step, where a wrong one fails mid-run)."""
    try:
        return model.body(body).id
    except (KeyError, IndexError, TypeError):
        names = [name for i in range(model.nbody) if (name := model.body(i).name)]  # Ant's feet have none
        raise ValueError(
            f"main_body must be a body's name or index (0 ... {model.nbody - 1}) in {xml_file}, got {body!r}; "
            f"its bodies: {', '.join(names)}"
        ) from None


class AntVectorEnv(LocomotionVectorEnv):
    """``num_envs`` Ant-v5 envs; see :class:`~envs.warp.locomotion.LocomotionVectorEnv`.

    Args: gymnasium's (``contact_force_range``, ``main_body``, ...), with its defaults, and
    :class:`~envs.warp.locomotion.LocomotionVectorEnv`'s.

    Shape: observation ``(N, 105)`` = 13 qpos, 14 qvel, 13 × 6 contact forces (``(N, 27)`` without
    them), actions ``(N, 8)`` in [-1, 1].
    """

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 1000,
        device: Device = "cpu",
        xml_file: str = "ant.xml",
        frame_skip: int = 5,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.5,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 1.0,
        main_body: int | str = 1,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool = True,
        include_cfrc_ext_in_observation: bool = True,
        **kwargs: Any,
    ) -> None:
        self.forward_reward_weight = real_option("forward_reward_weight", forward_reward_weight)
        self.ctrl_cost_weight = real_option("ctrl_cost_weight", ctrl_cost_weight)
        self.contact_cost_weight = real_option("contact_cost_weight", contact_cost_weight)
        self.healthy_reward = real_option("healthy_reward", healthy_reward)
        self.main_body = main_body
        self.terminate_when_unhealthy = flag_option("terminate_when_unhealthy", terminate_when_unhealthy)
        self.healthy_z_range = range_option("healthy_z_range", healthy_z_range)
        self.contact_force_range = range_option("contact_force_range", contact_force_range, unbounded=True)
        self.exclude_current_positions_from_observation = flag_option(
            "exclude_current_positions_from_observation", exclude_current_positions_from_observation
        )
        self.include_cfrc_ext_in_observation = flag_option("include_cfrc_ext_in_observation", include_cfrc_ext_in_observation)
        self._main_body_id = body_id(load_model(xml_file), main_body, xml_file)  # before Warp compiles anything
        super().__init__(num_envs, max_episode_steps, device, xml_file, frame_skip, reset_noise_scale, True, **kwargs)

    def _position(self) -> Tensor:
        return self.physics.xpos[:, self._main_body_id, :2].clone()

    def _contact_forces(self) -> Tensor:
        return self.physics.cfrc_ext.clamp(*self.contact_force_range)

    def _observe_physics(self) -> Tensor:
        parts = [self.physics.qpos[:, 2 * self.exclude_current_positions_from_observation :], self.physics.qvel]
        if self.include_cfrc_ext_in_observation:
            parts.append(self._contact_forces()[:, 1:].flatten(1))
        return torch.cat(parts, 1)

    def _reward_healthy(self, velocity: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        qpos, qvel = self.physics.qpos, self.physics.qvel
        z = qpos[:, 2]
        finite = qpos.isfinite().all(1) & qvel.isfinite().all(1)
        healthy = finite & (z >= self.healthy_z_range[0]) & (z <= self.healthy_z_range[1])
        contact_cost = self.contact_cost_weight * self._contact_forces().square().sum((1, 2))
        reward = self.forward_reward_weight * velocity[:, 0] + self.healthy_reward * healthy
        reward = reward - self.ctrl_cost_weight * action.square().sum(1) - contact_cost
        return reward, ~healthy & self.terminate_when_unhealthy


class AntEnv(LocomotionEnv):
    """One :class:`AntVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = AntVectorEnv
