"""MountainCarContinuous-v0 in batched torch: gymnasium's ``Continuous_MountainCarEnv``, step for step.

Same constants (``power`` an option: fixed, or drawn per env at every reset, see :mod:`envs.physics`), force clipped
to [-1, 1], velocity clipped to ±0.07, position to [-1.2, 0.6] (the left wall stops the car), termination at position
≥ 0.45 with velocity ≥ ``goal_velocity`` (both compared in float32, as gymnasium does), reward 100 on termination
minus 0.1 a² (of the unclipped action), initial position uniform in [-0.6, -0.4] at rest. Like gymnasium, the state is
rounded to float32 after every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control import utils
from torch import Tensor

from envs.base import Device, SingleEnv, real_option
from envs.physics import Constant, RandomizedPhysics, Range

MIN_ACTION = -1.0
MAX_ACTION = 1.0
MIN_POSITION = -1.2
MAX_POSITION = 0.6
MAX_SPEED = 0.07
GOAL_POSITION = 0.45
POWER = 0.0015
HILL = 0.0025  # the slope term's factor, a literal in gymnasium's step (not an attribute)


def dynamics(state: Tensor, action: Tensor, power: float | Tensor = POWER) -> Tensor:
    """``(N, 2) [position, velocity], (N,) forces -> (N, 2)``, rounded to float32 as gymnasium stores it.

    ``power``: one number for every env or an ``(N,)`` tensor of one per env in the state's dtype; env ``n`` steps bit
    for bit as it would with the number ``float(power[n])`` (one product either way)."""
    position, velocity = state.unbind(-1)
    force = action.clamp(MIN_ACTION, MAX_ACTION)
    velocity = (velocity + (force * power - HILL * torch.cos(3 * position))).clamp(-MAX_SPEED, MAX_SPEED)
    position = (position + velocity).clamp(MIN_POSITION, MAX_POSITION)
    velocity = velocity.masked_fill((position == MIN_POSITION) & (velocity < 0), 0.0)
    return torch.stack((position, velocity)).movedim(0, -1).float().to(state.dtype)


class MountainCarContinuousVectorEnv(RandomizedPhysics):
    """``num_envs`` MountainCarContinuous-v0 envs in torch; see :class:`envs.base.TorchVectorEnv` for the API.

    Args:
        num_envs: N.
        max_episode_steps: 999 for v0.
        device, dtype, num_threads, hide_velocities: see :class:`~envs.base.TorchVectorEnv`.
        goal_velocity: as gymnasium's option: the least velocity at the goal that ends the episode.
        power: the force per unit of action, gymnasium's ``power`` attribute (``None``: its 0.0015); > 0. The slope
            term's 0.0025 (gravity's part, a literal in gymnasium's step, no attribute) and the limits (speed,
            positions, goal: the observation space's bounds and the task's) stay module constants.
        power_range: ``[low, high]`` for domain randomization, as CartPole's (:mod:`envs.physics`): every ``reset()``
            draws each reset env's power uniformly in it, env ``i`` of ``reset(seed=s)`` from ``s + i`` alone;
            autoresets keep the episode's. Not together with ``power``. Settable between resets (a curriculum).

    Attributes:
        power: a number, or with ``power_range`` after a reset ``(N,)`` in ``dtype``, one per env; assignable (a number
            or ``N`` numbers). ``power_range``: ``(low, high)`` or ``None``.

    Shape:
        state ``(N, 2)`` = [position, velocity]; observation the same in float32; actions ``(N, 1)``
        or ``(N,)`` forces.
    """

    velocity_columns = (1,)  # the velocity
    state_dim = 2
    power = Constant(POWER, positive=True)
    power_range = Range(power)

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = 999,
        device: Device = "cpu",
        dtype: torch.dtype = torch.float64,
        num_threads: int | None = 1,
        goal_velocity: float = 0.0,
        hide_velocities: bool = False,
        render_mode: str | None = None,
        *,
        power: float | None = None,
        power_range: Sequence[float] | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"flipes envs do not render; render_mode must be None, got {render_mode!r}")
        self.goal_velocity = real_option("goal_velocity", goal_velocity)
        obs_space = spaces.Box(
            np.array([MIN_POSITION, -MAX_SPEED], dtype=np.float32), np.array([MAX_POSITION, MAX_SPEED], dtype=np.float32)
        )
        action_space = spaces.Box(MIN_ACTION, MAX_ACTION, shape=(1,), dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs_space, action_space, num_threads, hide_velocities)
        self._init_physics({"power": power, "power_range": power_range})

    def dynamics(self, state: Tensor, action: Tensor) -> Tensor:
        """``(N, 2) [position, velocity], (N,) forces -> (N, 2)``: the module's pure :func:`dynamics`, the one
        transition function of this env (and its single-env form), which tests/test_envs.py checks
        against gymnasium's ``Continuous_MountainCarEnv`` transition for transition, with this env's ``power`` (per env with
        ``power_range``)."""
        return dynamics(state, action, self.power)

    def _reward_terminated(self, state: Tensor, action: Tensor, next_state: Tensor) -> tuple[Tensor, Tensor]:
        # gymnasium (NumPy >= 2) steps in float32 and compares with the goal in float32, where 0.45 is 0.449999988:
        # compared in float64, a car landing on float32(0.45) would miss the goal (and its 100) that gymnasium's reaches
        position, velocity = next_state.float().unbind(1)
        done = (position >= GOAL_POSITION) & (velocity >= self.goal_velocity)
        return (100.0 * done - 0.1 * action.double().square()).float(), done

    def _observe(self, state: Tensor) -> Tensor:
        return state.to(torch.float32, memory_format=torch.contiguous_format, copy=True)

    def _initial_range(self, options: dict[str, Any] | None) -> tuple[list[float], list[float]]:
        low, high = utils.maybe_parse_reset_bounds(options, -0.6, -0.4)
        return [low, 0.0], [high, 0.0]


class MountainCarContinuousEnv(SingleEnv):
    """One :class:`MountainCarContinuousVectorEnv` as a numpy ``gymnasium.Env`` (what ``gymnasium.make`` builds)."""

    vector_env = MountainCarContinuousVectorEnv
