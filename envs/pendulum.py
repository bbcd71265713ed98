"""Pendulum-v1 in batched torch: gymnasium's ``PendulumEnv``, step for step.

Same constants (``g``, ``m`` and ``l`` options: fixed, or drawn per env at every reset, see :mod:`envs.physics`),
torque clipped to [-2, 2], angular velocity clipped to [-8, 8], semi-implicit Euler step of 0.05 s, reward
-(θ² + 0.1 θ̇² + 0.001 u²) of the state before the step (θ normalized to [-π, π)), never terminates, initial state
uniform in [-π, π] × [-1, 1].
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

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05
MASS = 1.0
LENGTH = 1.0


class Coefficients(NamedTuple):
    """gymnasium's products of the constants ``g``, ``m`` and ``l`` as the dynamics uses them: numbers for every env,
    or ``(N,)`` tensors of one per env."""

    swing: float | Tensor  # 3 g / (2 l): θ̇'s change per unit sin θ and second
    push: float | Tensor  # 3 / (m l²): its change per unit torque and second


def coefficients(g: float | Tensor, m: float | Tensor, l: float | Tensor) -> Coefficients:  # noqa: E741  gymnasium's name
    """The :class:`Coefficients` of the constants, numbers or tensors alike, as gymnasium's step computes them."""
    return Coefficients(3 * g / (2 * l), 3.0 / (m * l**2))


DEFAULT = coefficients(10.0, MASS, LENGTH)


def dynamics(state: Tensor, action: Tensor, g: float | Tensor | Coefficients = 10.0) -> Tensor:
    """``(N, 2) [θ, θ̇], (N,) torques -> (N, 2)``: one step; torques beyond ±2 are clipped.

    ``g``: gravity (with gymnasium's unit mass and length), one number for every env or an ``(N,)`` tensor of one per
    env in the state's dtype; env ``n`` steps bit for bit as it would with the number ``float(g[n])`` (``3 g / 2``
    rounds once either way). Or the :func:`coefficients` of other ``g``, ``m`` and ``l``."""
    th, thdot = state.unbind(-1)
    u = action.clamp(-MAX_TORQUE, MAX_TORQUE)
    c = g if isinstance(g, Coefficients) else coefficients(g, MASS, LENGTH)
    newthdot = thdot + (c.swing * torch.sin(th) + c.push * u) * DT
    newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED)
    return torch.stack((th + newthdot * DT, newthdot)).movedim(0, -1)


def reward(state: Tensor, action: Tensor) -> Tensor:
    """``(N, 2), (N,) -> (N,)``: minus the cost of the state before the step and the clipped torque."""
    th, thdot = state.unbind(-1)
    u = action.clamp(-MAX_TORQUE, MAX_TORQUE)
    angle = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
    # -(angle² + 0.1 θ̇² + 0.001 u²) without the negation's op: (-0.1 θ̇²) - angle² - 0.001 u², the same bits (rounding
    # to nearest commutes with negation, and a + b = b + a)
    return (thdot**2).mul_(-0.1).sub_(angle**2).sub_(0.001 * u**2)


class PendulumVectorEnv(RandomizedPhysics):
    """``num_envs`` Pendulum-v1 envs in torch; see :class:`envs.base.TorchVectorEnv` for the API.

    Args:
        num_envs: N.
        max_episode_steps: 200 for v1.
        device, dtype, num_threads, hide_velocities: see :class:`~envs.base.TorchVectorEnv`.
        g: gravity, as gymnasium's ``g`` option (``None``: its 10.0); not together with ``g_range``.
        m, l: the pendulum's mass and length, gymnasium's ``m`` and ``l`` attributes (``None``: its 1.0 and 1.0); > 0.
            Derived in float64 as gymnasium's step derives them (``3 g / (2 l)``, ``3 / (m l²)``).
        g_range: ``[low, high]`` for domain randomization: every ``reset()`` draws each env's gravity uniformly in
            it, env ``i`` of ``reset(seed=s)`` from ``s + i`` alone (the SplitMix64 output after its initial
            state's), as the state is, so a member's episodes keep their gravity however the population is split;
            without a seed, from the env's generator. A ``reset_mask`` redraws the masked envs' only; autoresets keep
            the episode's. ``None`` (the default): ``g`` for every env. Settable between resets (a curriculum); set to
            ``None`` after draws, the envs keep their last draws until ``g`` is assigned (``env.g = 10.0``).
            :mod:`envs.physics` does this for every env's physical constants.
        m_range, l_range: ``[low, high]`` for ``m`` and ``l``, drawn as ``g_range`` (after it: SplitMix64 outputs
            ``state_dim + 2`` and ``+ 3``).

    Attributes:
        g: gravity, a number, or with ``g_range`` after a reset ``(N,)`` in ``dtype``, one per env; assign a number
            or ``N`` numbers to set it (until the next reset with ``g_range``). ``m`` and ``l`` alike.

    Shape:
        state ``(N, 2)`` = [θ, θ̇] (θ is not wrapped, as in gymnasium); observation ``(N, 3)`` =
        [cos θ, sin θ, θ̇] in float32; actions ``(N, 1)`` or ``(N,)`` torques.
    """

    velocity_columns = (2,)  # θ̇
    state_dim = 2
    g = Constant(10.0)
    m = Constant(MASS, positive=True)
    l = Constant(LENGTH, positive=True)  # noqa: E741  gymnasium's name
    g_range = Range(g)
    m_range = Range(m)
    l_range = Range(l)

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 200,
        device: Device = "cpu",
        dtype: torch.dtype = torch.float64,
        num_threads: int | None = 1,
        g: float | None = None,
        hide_velocities: bool = False,
        render_mode: str | None = None,
        g_range: tuple[float, float] | None = None,
        *,
        m: float | None = None,
        l: float | None = None,  # noqa: E741  gymnasium's name
        m_range: Sequence[float] | None = None,
        l_range: Sequence[float] | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"flipes envs do not render; render_mode must be None, got {render_mode!r}")
        high = np.array([1.0, 1.0, MAX_SPEED], dtype=np.float32)
        obs_space = spaces.Box(-high, high, dtype=np.float32)
        action_space = spaces.Box(-MAX_TORQUE, MAX_TORQUE, shape=(1,), dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs_space, action_space, num_threads, hide_velocities)
        self._init_physics({"g": g, "g_range": g_range, "m": m, "l": l, "m_range": m_range, "l_range": l_range})

    def _physics_changed(self) -> None:
        # gymnasium's constants: the default numbers, as before; any other, fixed or per env: (N,) coefficients in dtype,
        # the same bits as before for g alone (3 g / 2 rounds once either way)
        self._coefficients = self._derive(coefficients, DEFAULT)

    def dynamics(self, state: Tensor, action: Tensor) -> Tensor:
        """``(N, 2) [θ, θ̇], (N,) torques -> (N, 2)``: the module's pure :func:`dynamics` with this env's gravity ``g`` (per env
        with ``g_range``; or the coefficients of its ``m`` and ``l``), the one
        transition function of this env (and its single-env form), which tests/test_envs.py checks
        against gymnasium's ``PendulumEnv`` transition for transition."""
        return dynamics(state, action, self._coefficients)

    def _reward_terminated(self, state: Tensor, action: Tensor, next_state: Tensor) -> tuple[Tensor, Tensor]:
        return reward(state, action).float(), torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def _observe(self, state: Tensor) -> Tensor:
        th, thdot = state.unbind(-1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), -1).float()

    def _initial_range(self, options: dict[str, Any] | None) -> tuple[list[float], list[float]]:
        # gymnasium's options: symmetric bounds x_init (θ, default π) and y_init (θ̇, default 1)
        options = options or {}
        x = utils.verify_number_and_cast(options.get("x_init", math.pi))
        y = utils.verify_number_and_cast(options.get("y_init", 1.0))
        return [-x, -y], [x, y]


class PendulumEnv(SingleEnv):
    """One :class:`PendulumVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = PendulumVectorEnv
