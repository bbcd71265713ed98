"""CartPole-v1 in batched torch: gymnasium's ``CartPoleEnv`` (Barto, Sutton & Anderson, 1983), step for step.

Same constants (options: fixed, or drawn per env at every reset, see :mod:`envs.physics`), explicit Euler
integration, termination at |x| > 2.4 or |θ| > 12°, reward 1 per step (``sutton_barto_reward``: 0, and -1 on
termination), initial state uniform in (-0.05, 0.05)⁴.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control import utils
from torch import Tensor

from envs.base import Device, SingleEnv
from envs.physics import Constant, RandomizedPhysics, Range

GRAVITY = 9.8
MASSCART = 1.0
MASSPOLE = 0.1
LENGTH = 0.5  # half the pole's length
FORCE_MAG = 10.0
TAU = 0.02  # seconds per step
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


class Coefficients(NamedTuple):
    """The physical constants as the dynamics uses them (gymnasium's ``total_mass`` and ``polemass_length`` folded in):
    numbers for every env, or ``(N,)`` tensors of one per env."""

    gravity: float | Tensor
    push_low: float | Tensor  # -force_mag / total_mass: temp's force term at action 0
    push_step: float | Tensor  # 2 force_mag / total_mass: its increase at action 1
    spin: float | Tensor  # polemass_length / total_mass
    inertia: float | Tensor  # 4 length / 3
    inertia_cos2: float | Tensor  # -length masspole / total_mass
    reaction: float | Tensor  # -polemass_length / total_mass


def coefficients(
    gravity: float | Tensor, masscart: float | Tensor, masspole: float | Tensor, length: float | Tensor, force_mag: float | Tensor
) -> Coefficients:
    """The :class:`Coefficients` of gymnasium's constants, numbers or tensors alike (the same operations in the same order)."""
    total_mass = masspole + masscart
    polemass_length = masspole * length
    return Coefficients(
        gravity,
        -force_mag / total_mass,
        2 * force_mag / total_mass,
        polemass_length / total_mass,
        length * 4.0 / 3.0,
        -length * masspole / total_mass,
        -polemass_length / total_mass,
    )


DEFAULT = coefficients(GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG)


def _addcmul(input: Tensor, t1: Tensor, t2: Tensor, value: float | Tensor) -> Tensor:
    """``input + value t1 t2``, ``value`` one number or ``(N,)``; a tensor ``value`` multiplies ``t1`` first."""
    if isinstance(value, Tensor):
        return torch.addcmul(input, t1 * value, t2)
    return torch.addcmul(input, t1, t2, value=value)


def dynamics(state: Tensor, action: Tensor, physics: Coefficients = DEFAULT) -> Tensor:
    """``(N, 4) [x, ẋ, θ, θ̇], (N,) actions in {0, 1} -> (N, 4)``: one Euler step of 0.02 s.

    gymnasium's formulas, with the arithmetic fused into fewer torch ops (a step costs about one
    microsecond per op on a CPU); this rounds differently from gymnasium by about 1e-16 relative.
    The result is column-major (each component contiguous), which is what this function reads fastest.
    ``physics``: gymnasium's defaults, or :func:`coefficients` of other constants; numbers take the fused ops, ``(N,)``
    tensors (one per env) the same arithmetic with each number moved into an operand: env ``n`` then steps bit for bit
    as an env with ``(1,)`` tensors of its values, whichever the other envs' are.
    """
    x, x_dot, theta, theta_dot = state.unbind(-1)
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    c = physics
    # temp = (force + l m_p θ̇² sin θ) / M, force exactly ±force_mag from actions 0 and 1 (c.push_step · action is exact)
    if isinstance(c.push_low, Tensor):
        temp = torch.addcmul(c.push_low, c.push_step, action)
        denominator = torch.addcmul(c.inertia, costheta * c.inertia_cos2, costheta)
    else:
        temp = torch.full_like(x, c.push_low).add_(action, alpha=c.push_step)
        denominator = torch.addcmul(torch.full_like(x, c.inertia), costheta, costheta, value=c.inertia_cos2)
    temp = _addcmul(temp, theta_dot.square(), sintheta, c.spin)
    # thetaacc = (g sin θ - cos θ temp) / (l (4/3 - m_p cos² θ / M)), the denominator above
    thetaacc = torch.addcmul(sintheta.mul_(c.gravity), costheta, temp, value=-1.0).div_(denominator)
    xacc = _addcmul(temp, thetaacc, costheta, c.reaction)
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


class CartPoleVectorEnv(RandomizedPhysics):
    """``num_envs`` CartPole-v1 envs in torch; see :class:`envs.base.TorchVectorEnv` for the API.

    Args:
        num_envs: N.
        max_episode_steps: 500 for v1.
        device, dtype, num_threads, hide_velocities: see :class:`~envs.base.TorchVectorEnv`.
        sutton_barto_reward: as in gymnasium: reward 0 per step and -1 on termination.
        gravity, masscart, masspole, length, force_mag: the physical constants, named as gymnasium's ``CartPoleEnv``
            attributes (``length`` is half the pole's); ``None``: gymnasium's 9.8, 1.0, 0.1, 0.5 and 10.0. Masses and
            length must be > 0.
        gravity_range, masscart_range, masspole_range, length_range, force_mag_range: ``[low, high]`` for domain
            randomization, as Pendulum's ``g_range`` (:mod:`envs.physics`): every ``reset()`` draws each reset env's
            value uniformly in it, env ``i`` of ``reset(seed=s)`` from ``s + i`` alone; autoresets keep the episode's.
            Not together with the constant's fixed value. Settable between resets (a curriculum).

    Attributes:
        gravity, masscart, masspole, length, force_mag: a number, or with its range after a reset ``(N,)`` in
            ``dtype``, one per env; assignable (a number or ``N`` numbers) as Pendulum's ``g``.
        gravity_range, ...: the ranges, ``(low, high)`` or ``None``.

    Shape:
        state ``(N, 4)`` = [x, ẋ, θ, θ̇]; observation the same in float32; actions ``(N,)`` in {0, 1}.
    """

    velocity_columns = (1, 3)  # ẋ and θ̇
    state_dim = 4
    gravity = Constant(GRAVITY)
    masscart = Constant(MASSCART, positive=True)
    masspole = Constant(MASSPOLE, positive=True)
    length = Constant(LENGTH, positive=True)
    force_mag = Constant(FORCE_MAG)
    gravity_range = Range(gravity)
    masscart_range = Range(masscart)
    masspole_range = Range(masspole)
    length_range = Range(length)
    force_mag_range = Range(force_mag)

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
        *,
        gravity: float | None = None,
        masscart: float | None = None,
        masspole: float | None = None,
        length: float | None = None,
        force_mag: float | None = None,
        gravity_range: Sequence[float] | None = None,
        masscart_range: Sequence[float] | None = None,
        masspole_range: Sequence[float] | None = None,
        length_range: Sequence[float] | None = None,
        force_mag_range: Sequence[float] | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"flipes envs do not render; render_mode must be None, got {render_mode!r}")
        self.sutton_barto_reward = sutton_barto_reward
        high = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf], dtype=np.float32)
        obs_space = spaces.Box(-high, high, dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs_space, spaces.Discrete(2), num_threads, hide_velocities)
        self._thresholds = torch.tensor([X_THRESHOLD, THETA_THRESHOLD], dtype=self.dtype, device=self.device)
        self._init_physics(
            dict(gravity=gravity, masscart=masscart, masspole=masspole, length=length, force_mag=force_mag,
                 gravity_range=gravity_range, masscart_range=masscart_range, masspole_range=masspole_range,
                 length_range=length_range, force_mag_range=force_mag_range)
        )  # fmt: skip

    def _physics_changed(self) -> None:
        # gymnasium's constants: the fused default ops; any other, fixed or per env: (N,) coefficients in dtype
        self._coefficients = self._derive(coefficients, DEFAULT)

    def dynamics(self, state: Tensor, action: Tensor) -> Tensor:
        """``(N, 4) [x, ẋ, θ, θ̇], (N,) actions in {0, 1} -> (N, 4)``: the module's pure :func:`dynamics`, the one
        transition function of this env (and its single-env form), which tests/test_envs.py checks
        against gymnasium's ``CartPoleEnv`` transition for transition."""
        return dynamics(state, action, self._coefficients)

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
