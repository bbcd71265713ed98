"""Acrobot-v1 in batched torch: gymnasium's ``AcrobotEnv`` (Sutton, 1996; the book's dynamics), step for step.

Same constants, one RK4 step of 0.2 s with the torque held constant, angles wrapped to [-π, π],
velocities bounded to ±4π and ±9π, termination when the tip rises above the bar
(-cos θ₁ - cos(θ₁ + θ₂) > 1), reward -1 per step and 0 on termination, and the initial state
uniform in (-0.1, 0.1)⁴ rounded to float32, as gymnasium stores it.
"""

from __future__ import annotations

from math import pi
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control import utils
from torch import Tensor

from envs.base import Device, SingleEnv, TorchVectorEnv

DT = 0.2
LINK_LENGTH_1 = 1.0
LINK_MASS_1 = 1.0
LINK_MASS_2 = 1.0
LINK_COM_POS_1 = 0.5
LINK_COM_POS_2 = 0.5
LINK_MOI = 1.0
MAX_VEL_1 = 4 * pi
MAX_VEL_2 = 9 * pi
G = 9.8

Columns = tuple[Tensor, Tensor, Tensor, Tensor]


def _dsdt(s: Columns, a: Tensor) -> Columns:
    # gymnasium's AcrobotEnv._dsdt ("book" dynamics), same operations in the same order
    m1, m2, l1, lc1, lc2, I1, I2 = LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1, LINK_COM_POS_1, LINK_COM_POS_2, LINK_MOI, LINK_MOI
    theta1, theta2, dtheta1, dtheta2 = s
    cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos2) + I1 + I2
    d2 = m2 * (lc2**2 + l1 * lc2 * cos2) + I2
    phi2 = m2 * lc2 * G * torch.cos(theta1 + theta2 - pi / 2.0)
    phi1 = (
        -m2 * l1 * lc2 * dtheta2**2 * sin2
        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin2
        + (m1 * lc1 + m2 * l1) * G * torch.cos(theta1 - pi / 2)
        + phi2
    )
    ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin2 - phi2) / (m2 * lc2**2 + I2 - d2**2 / d1)
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return dtheta1, dtheta2, ddtheta1, ddtheta2


def _wrap(x: Tensor, m: float, M: float) -> Tensor:
    # gymnasium adds or subtracts (M - m) until m <= x <= M; k at once here
    diff = M - m
    k = torch.ceil((x - M) / diff).clamp_(min=0) - torch.ceil((m - x) / diff).clamp_(min=0)
    return torch.where(k == 0, x, x - k * diff)


def dynamics(state: Tensor, action: Tensor) -> Tensor:
    """``(N, 4) [θ₁, θ₂, θ̇₁, θ̇₂], (N,) actions in {0, 1, 2} (torque -1, 0, +1) -> (N, 4)``: one RK4 step."""
    torque = action.to(state.dtype) - 1.0
    y0 = state.unbind(-1)
    dt2 = DT / 2.0
    k1 = _dsdt(y0, torque)
    k2 = _dsdt(tuple(y + dt2 * k for y, k in zip(y0, k1, strict=True)), torque)  # type: ignore[arg-type]
    k3 = _dsdt(tuple(y + dt2 * k for y, k in zip(y0, k2, strict=True)), torque)  # type: ignore[arg-type]
    k4 = _dsdt(tuple(y + DT * k for y, k in zip(y0, k3, strict=True)), torque)  # type: ignore[arg-type]
    ns = [y + DT / 6.0 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(y0, k1, k2, k3, k4, strict=True)]
    return torch.stack(
        (_wrap(ns[0], -pi, pi), _wrap(ns[1], -pi, pi), ns[2].clamp(-MAX_VEL_1, MAX_VEL_1), ns[3].clamp(-MAX_VEL_2, MAX_VEL_2))
    ).movedim(0, -1)


def terminated(state: Tensor) -> Tensor:
    """``(N, 4) -> (N,)`` bool: the free end is above the bar, -cos θ₁ - cos(θ₁ + θ₂) > 1."""
    theta1, theta2 = state[..., 0], state[..., 1]
    return -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0


class AcrobotVectorEnv(TorchVectorEnv):
    """``num_envs`` Acrobot-v1 envs in torch; see :class:`envs.base.TorchVectorEnv` for the API.

    Args:
        num_envs: N.
        max_episode_steps: 500 for v1.
        device, dtype, num_threads, hide_velocities: see :class:`~envs.base.TorchVectorEnv`.

    Shape:
        state ``(N, 4)`` = [θ₁, θ₂, θ̇₁, θ̇₂]; observation ``(N, 6)`` = [cos θ₁, sin θ₁, cos θ₂, sin θ₂,
        θ̇₁, θ̇₂] in float32; actions ``(N,)`` in {0, 1, 2}.
    """

    velocity_columns = (4, 5)  # θ̇₁ and θ̇₂
    state_dim = 4

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 500,
        device: Device = "cpu",
        dtype: torch.dtype = torch.float64,
        num_threads: int | None = 1,
        hide_velocities: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"flipes envs do not render; render_mode must be None, got {render_mode!r}")
        high = np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32)
        obs_space = spaces.Box(-high, high, dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs_space, spaces.Discrete(3), num_threads, hide_velocities)

    def dynamics(self, state: Tensor, action: Tensor) -> Tensor:
        """``(N, 4) [θ₁, θ₂, θ̇₁, θ̇₂], (N,) actions in {0, 1, 2} -> (N, 4)``: the module's pure :func:`dynamics`, the one
        transition function of this env (and its single-env form), which tests/test_envs.py checks
        against gymnasium's ``AcrobotEnv`` transition for transition."""
        return dynamics(state, action)

    def _reward_terminated(self, state: Tensor, action: Tensor, next_state: Tensor) -> tuple[Tensor, Tensor]:
        done = terminated(next_state)
        return done.float() - 1.0, done

    def _observe(self, state: Tensor) -> Tensor:
        theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
        obs = (torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2), dtheta1, dtheta2)
        return torch.stack(obs, -1).float()

    def _initial_range(self, options: dict[str, Any] | None) -> tuple[list[float], list[float]]:
        low, high = utils.maybe_parse_reset_bounds(options, -0.1, 0.1)
        return [low] * 4, [high] * 4

    def _sample(self, n: int, seeds: Tensor | None = None) -> Tensor:
        return super()._sample(n, seeds).float().to(self.dtype)  # gymnasium draws in float64, keeps float32


class AcrobotEnv(SingleEnv):
    """One :class:`AcrobotVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = AcrobotVectorEnv
