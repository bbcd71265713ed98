"""CartPole-v1 in batched torch: gymnasium's ``CartPoleEnv`` (Barto, Sutton & Anderson, 1983), step for step.

Same constants, explicit Euler integration, termination at |x| > 2.4 or |θ| > 12°, reward 1 per
step (``sutton_barto_reward``: 0, and -1 on termination), initial state uniform in (-0.05, 0.05)⁴.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control import utils
from torch import Tensor

from envs.base import Device, SingleEnv, TorchVectorEnv

GRAVITY = 9.8
MASSCART = 1.0
MASSPOLE = 0.1
TOTAL_MASS = MASSPOLE + MASSCART
LENGTH = 0.5  # half the pole's length
POLEMASS_LENGTH = MASSPOLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02  # seconds per step
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


def dynamics(state: Tensor, action: Tensor) -> Tensor:
    """``(N, 4) [x, ẋ, θ, θ̇], (N,) actions in {0, 1} -> (N, 4)``: one Euler step of 0.02 s.

    gymnasium's formulas, with the arithmetic fused into fewer torch ops (a step costs about one
    microsecond per op on a CPU); this rounds differently from gymnasium by about 1e-16 relative.
    The result is column-major (each component contiguous), which is what this function reads fastest.
    """
    x, x_dot, theta, theta_dot = state.unbind(-1)
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    # temp = (force + l m_p θ̇² sin θ) / M, force exactly ±10 from actions 0 and 1
    temp = torch.full_like(x, -FORCE_MAG / TOTAL_MASS).add_(action, alpha=2 * FORCE_MAG / TOTAL_MASS)
    temp = torch.addcmul(temp, theta_dot.square(), sintheta, value=POLEMASS_LENGTH / TOTAL_MASS)
    # thetaacc = (g sin θ - cos θ temp) / (l (4/3 - m_p cos² θ / M))
    denominator = torch.addcmul(torch.full_like(x, LENGTH * 4.0 / 3.0), costheta, costheta, value=-LENGTH * MASSPOLE / TOTAL_MASS)
    thetaacc = torch.addcmul(sintheta.mul_(GRAVITY), costheta, temp, value=-1.0).div_(denominator)
    xacc = torch.addcmul(temp, thetaacc, costheta, value=-POLEMASS_LENGTH / TOTAL_MASS)
    # explicit Euler, each component written straight into a row of (4, N), the column-major result (no stack/copy);
    # the rows unbound in one op, not selected one by one (out[..., i]: an op and Python's slow indexing each)
    out = torch.empty(state.shape[::-1], dtype=state.dtype, device=state.device)
    for value, rate, row in zip((x, x_dot, theta, theta_dot), (x_dot, xacc, theta_dot, thetaacc), out.unbind(0), strict=True):
        torch.add(value, rate, alpha=TAU, out=row)
    return out.mT


def terminated(state: Tensor, thresholds: Tensor | None = None) -> Tensor:
    """``(N, 4) -> (N,)`` bool: the cart left [-2.4, 2.4] or the pole fell past 12°.

    ``thresholds``: ``[X_THRESHOLD, THETA_THRESHOLD]`` in the state's dtype and device, made once by the caller
    (:class:`CartPoleVectorEnv` keeps one); ``None`` makes it. Both components are compared in one op against them,
    in the state's dtype as a comparison with the Python constants is, and or-ed by ``any``: three ops."""
    if thresholds is None:
        thresholds = torch.tensor([X_THRESHOLD, THETA_THRESHOLD], dtype=state.dtype, device=state.device)
    return torch.gt(state[..., ::2].abs(), thresholds).any(-1)


class CartPoleVectorEnv(TorchVectorEnv):
    """``num_envs`` CartPole-v1 envs in torch; see :class:`envs.base.TorchVectorEnv` for the API.

    Args:
        num_envs: N.
        max_episode_steps: 500 for v1.
        device, dtype, num_threads, hide_velocities: see :class:`~envs.base.TorchVectorEnv`.
        sutton_barto_reward: as in gymnasium: reward 0 per step and -1 on termination.

    Shape:
        state ``(N, 4)`` = [x, ẋ, θ, θ̇]; observation the same in float32; actions ``(N,)`` in {0, 1}.
    """

    velocity_columns = (1, 3)  # ẋ and θ̇
    state_dim = 4

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 500,
        device: Device = "cpu",
        dtype: torch.dtype = torch.float64,
        num_threads: int | None = 1,
        sutton_barto_reward: bool = False,
        hide_velocities: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"flipes envs do not render; render_mode must be None, got {render_mode!r}")
        self.sutton_barto_reward = sutton_barto_reward
        high = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf], dtype=np.float32)
        obs_space = spaces.Box(-high, high, dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs_space, spaces.Discrete(2), num_threads, hide_velocities)
        self._thresholds = torch.tensor([X_THRESHOLD, THETA_THRESHOLD], dtype=self.dtype, device=self.device)

    def dynamics(self, state: Tensor, action: Tensor) -> Tensor:
        """``(N, 4) [x, ẋ, θ, θ̇], (N,) actions in {0, 1} -> (N, 4)``: the module's pure :func:`dynamics`, the one
        transition function of this env (and its single-env form), which tests/test_envs.py checks
        against gymnasium's ``CartPoleEnv`` transition for transition."""
        return dynamics(state, action)

    def _reward_terminated(self, state: Tensor, action: Tensor, next_state: Tensor) -> tuple[Tensor, Tensor]:
        done = terminated(next_state, self._thresholds)
        reward = -done.float() if self.sutton_barto_reward else torch.ones(self.num_envs, device=self.device)
        return reward, done

    def _observe(self, state: Tensor) -> Tensor:
        return state.to(torch.float32, memory_format=torch.contiguous_format, copy=True)

    def _initial_range(self, options: dict[str, Any] | None) -> tuple[list[float], list[float]]:
        low, high = utils.maybe_parse_reset_bounds(options, -0.05, 0.05)
        return [low] * 4, [high] * 4


class CartPoleEnv(SingleEnv):
    """One :class:`CartPoleVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = CartPoleVectorEnv
