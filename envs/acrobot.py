"""Acrobot-v1 in batched torch: gymnasium's ``AcrobotEnv`` (Sutton, 1996; the book's dynamics), step for step.

Same constants (the physical ones options: fixed, or drawn per env at every reset, see :mod:`envs.physics`), one RK4
step of 0.2 s with the torque held constant, angles wrapped to [-π, π], velocities bounded to ±4π and ±9π, termination
when the tip rises above the bar (-cos θ₁ - cos(θ₁ + θ₂) > 1), reward -1 per step and 0 on termination, and the initial
state uniform in (-0.1, 0.1)⁴ rounded to float32, as gymnasium stores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import pi
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control import utils
from torch import Tensor

from envs.base import Device, SingleEnv
from envs.physics import Constant, RandomizedPhysics, Range

DT = 0.2
LINK_LENGTH_1 = 1.0
LINK_MASS_1 = 1.0
LINK_MASS_2 = 1.0
LINK_COM_POS_1 = 0.5
LINK_COM_POS_2 = 0.5
LINK_MOI = 1.0
MAX_VEL_1 = 4 * pi
MAX_VEL_2 = 9 * pi
G = 9.8  # a literal in gymnasium's _dsdt, not an attribute

Columns = tuple[Tensor, Tensor, Tensor, Tensor]


class Coefficients(NamedTuple):
    """The physical constants as :func:`_dsdt` uses them, gymnasium's products of constants folded in: numbers for every
    env, or ``(N,)`` tensors of one per env."""

    m2: float | Tensor
    moi: float | Tensor  # I1 = I2
    d1_0: float | Tensor  # m1 lc1²
    d1_1: float | Tensor  # l1² + lc2²
    d1_2: float | Tensor  # 2 l1 lc2
    d2_0: float | Tensor  # lc2²
    d2_1: float | Tensor  # l1 lc2
    phi2: float | Tensor  # m2 lc2 g
    phi1_0: float | Tensor  # -m2 l1 lc2
    phi1_1: float | Tensor  # 2 m2 l1 lc2
    phi1_2: float | Tensor  # (m1 lc1 + m2 l1) g
    coriolis: float | Tensor  # m2 l1 lc2
    inertia2: float | Tensor  # m2 lc2² + I2


def coefficients(
    link_length_1: float | Tensor,
    link_mass_1: float | Tensor,
    link_mass_2: float | Tensor,
    link_com_pos_1: float | Tensor,
    link_com_pos_2: float | Tensor,
    link_moi: float | Tensor,
) -> Coefficients:
    """The :class:`Coefficients` of gymnasium's constants, numbers or tensors alike: the products its ``_dsdt`` computes
    before the first tensor, in the same order."""
    m1, m2, l1, lc1, lc2, moi = link_mass_1, link_mass_2, link_length_1, link_com_pos_1, link_com_pos_2, link_moi
    return Coefficients(
        m2,
        moi,
        m1 * lc1**2,
        l1**2 + lc2**2,
        2 * l1 * lc2,
        lc2**2,
        l1 * lc2,
        m2 * lc2 * G,
        -m2 * l1 * lc2,
        2 * m2 * l1 * lc2,
        (m1 * lc1 + m2 * l1) * G,
        m2 * l1 * lc2,
        m2 * lc2**2 + moi,
    )


DEFAULT = coefficients(LINK_LENGTH_1, LINK_MASS_1, LINK_MASS_2, LINK_COM_POS_1, LINK_COM_POS_2, LINK_MOI)


def _dsdt(s: Columns, a: Tensor, c: Coefficients) -> Columns:
    # gymnasium's AcrobotEnv._dsdt ("book" dynamics), same operations in the same order
    theta1, theta2, dtheta1, dtheta2 = s
    cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
    d1 = c.d1_0 + c.m2 * (c.d1_1 + c.d1_2 * cos2) + c.moi + c.moi
    d2 = c.m2 * (c.d2_0 + c.d2_1 * cos2) + c.moi
    phi2 = c.phi2 * torch.cos(theta1 + theta2 - pi / 2.0)
    phi1 = c.phi1_0 * dtheta2**2 * sin2 - c.phi1_1 * dtheta2 * dtheta1 * sin2 + c.phi1_2 * torch.cos(theta1 - pi / 2) + phi2
    ddtheta2 = (a + d2 / d1 * phi1 - c.coriolis * dtheta1**2 * sin2 - phi2) / (c.inertia2 - d2**2 / d1)
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return dtheta1, dtheta2, ddtheta1, ddtheta2


def _wrap(x: Tensor, m: float, M: float) -> Tensor:
    # gymnasium adds or subtracts (M - m) until m <= x <= M; k at once here
    diff = M - m
    k = torch.ceil((x - M) / diff).clamp_(min=0) - torch.ceil((m - x) / diff).clamp_(min=0)
    return torch.where(k == 0, x, x - k * diff)


def dynamics(state: Tensor, action: Tensor, physics: Coefficients = DEFAULT) -> Tensor:
    """``(N, 4) [θ₁, θ₂, θ̇₁, θ̇₂], (N,) actions in {0, 1, 2} (torque -1, 0, +1) -> (N, 4)``: one RK4 step.

    ``physics``: gymnasium's defaults, or :func:`coefficients` of other constants, numbers or ``(N,)`` tensors (one per
    env) in the state's dtype, in the same operations: env ``n`` steps bit for bit as an env with its values."""
    torque = action.to(state.dtype) - 1.0
    y0 = state.unbind(-1)
    dt2 = DT / 2.0
    k1 = _dsdt(y0, torque, physics)
    k2 = _dsdt(tuple(y + dt2 * k for y, k in zip(y0, k1, strict=True)), torque, physics)  # type: ignore[arg-type]
    k3 = _dsdt(tuple(y + dt2 * k for y, k in zip(y0, k2, strict=True)), torque, physics)  # type: ignore[arg-type]
    k4 = _dsdt(tuple(y + DT * k for y, k in zip(y0, k3, strict=True)), torque, physics)  # type: ignore[arg-type]
    ns = [y + DT / 6.0 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(y0, k1, k2, k3, k4, strict=True)]
    return torch.stack(
        (_wrap(ns[0], -pi, pi), _wrap(ns[1], -pi, pi), ns[2].clamp(-MAX_VEL_1, MAX_VEL_1), ns[3].clamp(-MAX_VEL_2, MAX_VEL_2))
    ).movedim(0, -1)


def terminated(state: Tensor) -> Tensor:
    """``(N, 4) -> (N,)`` bool: the free end is above the bar, -cos θ₁ - cos(θ₁ + θ₂) > 1."""
    theta1, theta2 = state[..., 0], state[..., 1]
    return -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0


class AcrobotVectorEnv(RandomizedPhysics):
    """``num_envs`` Acrobot-v1 envs in torch; see :class:`envs.base.TorchVectorEnv` for the API.

    Args:
        num_envs: N.
        max_episode_steps: 500 for v1.
        device, dtype, num_threads, hide_velocities: see :class:`~envs.base.TorchVectorEnv`.
        link_length_1, link_mass_1, link_mass_2, link_com_pos_1, link_com_pos_2, link_moi: the physical constants that
            gymnasium's ``AcrobotEnv`` dynamics reads, named as its attributes in lower case (``LINK_LENGTH_1``, ...;
            ``link_moi`` is both links' moment of inertia); ``None``: gymnasium's 1.0, 1.0, 1.0, 0.5, 0.5 and 1.0. All
            must be > 0. The termination test stays gymnasium's, that of unit links, whatever ``link_length_1``. Its
            other attributes stay module constants: ``LINK_LENGTH_2`` (read only by rendering), the limits ``MAX_VEL_1``
            and ``MAX_VEL_2`` (the observation space's), ``AVAIL_TORQUE`` (the action space), ``dt``, and gravity, 9.8,
            a literal in gymnasium's dynamics.
        link_length_1_range, ..., link_moi_range: ``[low, high]`` for domain randomization, as CartPole's
            (:mod:`envs.physics`): every ``reset()`` draws each reset env's value uniformly in it, env ``i`` of
            ``reset(seed=s)`` from ``s + i`` alone; autoresets keep the episode's. Not together with the constant's
            fixed value. Settable between resets (a curriculum).

    Attributes:
        link_length_1, ..., link_moi: a number, or with its range after a reset ``(N,)`` in ``dtype``, one per env;
            assignable (a number or ``N`` numbers).
        link_length_1_range, ...: the ranges, ``(low, high)`` or ``None``.

    Shape:
        state ``(N, 4)`` = [θ₁, θ₂, θ̇₁, θ̇₂]; observation ``(N, 6)`` = [cos θ₁, sin θ₁, cos θ₂, sin θ₂,
        θ̇₁, θ̇₂] in float32; actions ``(N,)`` in {0, 1, 2}.
    """

    velocity_columns = (4, 5)  # θ̇₁ and θ̇₂
    state_dim = 4
    link_length_1 = Constant(LINK_LENGTH_1, positive=True)
    link_mass_1 = Constant(LINK_MASS_1, positive=True)
    link_mass_2 = Constant(LINK_MASS_2, positive=True)
    link_com_pos_1 = Constant(LINK_COM_POS_1, positive=True)
    link_com_pos_2 = Constant(LINK_COM_POS_2, positive=True)
    link_moi = Constant(LINK_MOI, positive=True)
    link_length_1_range = Range(link_length_1)
    link_mass_1_range = Range(link_mass_1)
    link_mass_2_range = Range(link_mass_2)
    link_com_pos_1_range = Range(link_com_pos_1)
    link_com_pos_2_range = Range(link_com_pos_2)
    link_moi_range = Range(link_moi)

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 500,
        device: Device = "cpu",
        dtype: torch.dtype = torch.float64,
        num_threads: int | None = 1,
        hide_velocities: bool = False,
        render_mode: str | None = None,
        *,
        link_length_1: float | None = None,
        link_mass_1: float | None = None,
        link_mass_2: float | None = None,
        link_com_pos_1: float | None = None,
        link_com_pos_2: float | None = None,
        link_moi: float | None = None,
        link_length_1_range: Sequence[float] | None = None,
        link_mass_1_range: Sequence[float] | None = None,
        link_mass_2_range: Sequence[float] | None = None,
        link_com_pos_1_range: Sequence[float] | None = None,
        link_com_pos_2_range: Sequence[float] | None = None,
        link_moi_range: Sequence[float] | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"flipes envs do not render; render_mode must be None, got {render_mode!r}")
        high = np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32)
        obs_space = spaces.Box(-high, high, dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs_space, spaces.Discrete(3), num_threads, hide_velocities)
        self._init_physics(
            dict(link_length_1=link_length_1, link_mass_1=link_mass_1, link_mass_2=link_mass_2,
                 link_com_pos_1=link_com_pos_1, link_com_pos_2=link_com_pos_2, link_moi=link_moi,
                 link_length_1_range=link_length_1_range, link_mass_1_range=link_mass_1_range,
                 link_mass_2_range=link_mass_2_range, link_com_pos_1_range=link_com_pos_1_range,
                 link_com_pos_2_range=link_com_pos_2_range, link_moi_range=link_moi_range)
        )  # fmt: skip

    def _physics_changed(self) -> None:
        # gymnasium's constants: the default numbers, as before; any other, fixed or per env: (N,) coefficients in dtype
        self._coefficients = self._derive(coefficients, DEFAULT)

    def dynamics(self, state: Tensor, action: Tensor) -> Tensor:
        """``(N, 4) [θ₁, θ₂, θ̇₁, θ̇₂], (N,) actions in {0, 1, 2} -> (N, 4)``: the module's pure :func:`dynamics`, the one
        transition function of this env (and its single-env form), which tests/test_envs.py checks
        against gymnasium's ``AcrobotEnv`` transition for transition."""
        return dynamics(state, action, self._coefficients)

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
