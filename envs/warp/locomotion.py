"""What gymnasium's v5 MuJoCo locomotion envs share, on MuJoCo Warp: :class:`LocomotionVectorEnv`.

gymnasium's ``MujocoEnv`` (``gymnasium/envs/mujoco/mujoco_env.py``) for N envs at once: the model
from gymnasium's own XML, ``frame_skip`` physics steps per env step, the reset noise around
``qpos0`` (uniform, or normal for the velocities where the env says so), ``dt``, and the forward
velocity as the change of a position over ``dt`` (each body module says which position). A body
module (``half_cheetah.py``, ...) adds its observation, reward and termination as torch functions of
the physics' tensors. Everything else (seeding, action checks, the time limit, NEXT_STEP autoreset,
``reset_mask``) is :class:`envs.base.TorchVectorEnv`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from envs import seeding
from envs.base import DTYPE_NAMES, Device, SingleEnv, TorchVectorEnv, real_option, whole_number
from envs.warp.physics import WarpPhysics


def range_option(name: str, value: Any, unbounded: bool = False) -> tuple[float, float]:
    """``value`` of the env's range option ``name`` (``healthy_z_range``, ...) as ``(low, high)`` floats, low <= high; a
    ValueError naming it otherwise (a number, a string, one bound or a reversed range from ``--env-kwargs`` would
    otherwise fail only in ``step()``, or end every episode at once). With ``unbounded``, a ``None`` bound is no bound,
    as gymnasium's ``np.clip`` takes it (its clip ranges)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}")
    low, high = value
    if unbounded:
        low, high = -math.inf if low is None else low, math.inf if high is None else high
    elif low is None or high is None:  # gymnasium compares with < here, which None fails
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}; for no bound give one out of reach (1e9)")
    low, high = real_option(f"{name}'s low", low), real_option(f"{name}'s high", high)
    if not low <= high:  # NaN too
        raise ValueError(f"{name} must be a pair (low, high) with low <= high, got {value!r}")
    return low, high


def flag_option(name: str, value: Any) -> bool:
    """``value`` of the env's switch ``name``; a ValueError naming it where it is no bool (``"false"`` is truthy)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


class LocomotionVectorEnv(TorchVectorEnv):
    r"""``num_envs`` copies of a gymnasium v5 MuJoCo env, stepped on MuJoCo Warp on ``device``.

    Physics and observations are float32 (MuJoCo Warp's precision; gymnasium's MuJoCo runs in
    float64). A reset is gymnasium's: ``mj_resetData`` (controls, warm start and contact forces
    zeroed), the noisy ``qpos``/``qvel``, then ``mj_forward``.

    Args:
        num_envs: N.
        max_episode_steps: 1000 for the v5 envs.
        device: ``"cpu"`` steps on Warp's CPU backend, ``"cuda"`` on the GPU.
        xml_file, frame_skip, reset_noise_scale: as gymnasium's env takes them.
        normal_velocity_noise: the initial ``qvel`` is ``reset_noise_scale`` times a standard normal
            (HalfCheetah, Ant) instead of uniform in ``±reset_noise_scale`` (the others).
        dtype: must be ``torch.float32``, MuJoCo Warp's precision.
        capture: replay the physics as a recorded graph (see :class:`~envs.warp.physics.WarpPhysics`).
        num_threads: see :class:`~envs.base.TorchVectorEnv`.

    Attributes:
        physics: the :class:`~envs.warp.physics.WarpPhysics` (MuJoCo Warp's model and data).
        state: ``(N, nq + nv)`` = [qpos, qvel], a copy; assigning it sets every env's qpos and qvel
            and runs ``mj_forward``, as gymnasium's ``set_state`` (after ``mj_resetData``).
    """

    def __init__(
        self,
        num_envs: int,
        max_episode_steps: int | None,
        device: Device,
        xml_file: str,
        frame_skip: int,
        reset_noise_scale: float,
        normal_velocity_noise: bool,
        dtype: torch.dtype = torch.float32,
        capture: bool = True,
        num_threads: int | None = 1,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(dtype, str):  # --env-kwargs '{"dtype": "float32"}': JSON has no torch.dtype
            dtype = DTYPE_NAMES.get(dtype.removeprefix("torch."), dtype)
        if dtype != torch.float32:
            raise ValueError(f"MuJoCo Warp computes in float32; dtype must be torch.float32, got {dtype!r}")
        if render_mode is not None:
            raise ValueError(f"flipes envs do not render; render_mode must be None, got {render_mode!r}")
        count = whole_number(num_envs)
        if count is None or count < 1:  # the base env's check, before the physics is built with it
            raise ValueError(f"num_envs must be an integer of at least 1, got {num_envs!r}")
        skip = whole_number(frame_skip)
        if skip is None or skip < 1:
            raise ValueError(f"frame_skip must be a positive integer, got {frame_skip!r}")
        reset_noise_scale = real_option("reset_noise_scale", reset_noise_scale)
        capture = flag_option("capture", capture)
        # as Python ints: Warp sizes its arrays with them and takes no numpy integer
        self.physics = WarpPhysics(xml_file, count, skip, device, capture)
        model = self.physics.mj_model
        self.nq, self.nv = model.nq, model.nv
        self.state_dim = model.nq + model.nv
        self.reset_noise_scale = reset_noise_scale
        self.normal_velocity_noise = normal_velocity_noise
        self._init_state = np.concatenate([model.qpos0, np.zeros(model.nv)])  # gymnasium's init_qpos, init_qvel
        self._obs: Tensor | None = None
        self._pos: Tensor | None = None  # the position whose change over a step is the forward velocity
        low, high = model.actuator_ctrlrange.astype(np.float32).T  # gymnasium's action space
        obs_dim = self._observe_physics().shape[1]
        obs_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
        action_space = spaces.Box(low, high, dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, self.physics.device, torch.float32, obs_space, action_space, num_threads)

    @property
    def dt(self) -> float:
        """Seconds per env step, gymnasium's ``MujocoEnv.dt``."""
        return self.physics.dt

    # -- what a body module supplies ---------------------------------------------------------

    def _position(self) -> Tensor:
        """``(N, k)`` float32: the position whose change over ``dt`` is the velocity rewarded; by
        default the root's x, ``qpos[0]`` (HalfCheetah, Hopper, Walker2d)."""
        return self.physics.qpos[:, :1].clone()

    def _observe_physics(self) -> Tensor:
        """``(N, obs_dim)`` float32 observations of the physics' current data (a new tensor)."""
        raise NotImplementedError

    def _reward_healthy(self, velocity: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Rewards ``(N,)`` and terminations ``(N,)`` bool after a step, given the velocity
        ``(N, k)`` of :meth:`_position` and the actions ``(N, nu)``."""
        raise NotImplementedError

    # -- TorchVectorEnv's hooks --------------------------------------------------------------

    def _initial_range(self, options: dict[str, Any] | None) -> tuple[list[float], list[float]]:
        # gymnasium's MuJoCo envs ignore reset options
        s = self.reset_noise_scale
        return (self._init_state - s).tolist(), (self._init_state + s).tolist()

    def _sample(self, n: int, seeds: Tensor | None = None) -> Tensor:
        state = super()._sample(n, seeds)  # uniform in init ± scale, as gymnasium draws qpos
        if self.normal_velocity_noise:
            if seeds is None:
                z = torch.randn(n, self.nv, generator=self._generator, device=self.device, dtype=self.dtype)
            else:  # SplitMix64 outputs after the state_dim uniforms above
                z = seeding.normal(seeds, self.nv, skip=self.state_dim, dtype=self.dtype)
            state[:, self.nq :] = z * self.reset_noise_scale  # init_qvel is 0
        return state

    def _advance(self, action: Tensor) -> tuple[Tensor, Tensor]:
        physics = self.physics
        physics.ctrl.copy_(action)  # MuJoCo clamps it to ctrlrange itself; the control cost takes it as given
        before = self._pos
        physics.step()
        self._pos = self._position()
        self._obs = self._observe_physics()  # now: a reset below recomputes the data of every env
        reward, terminated = self._reward_healthy((self._pos - before) / physics.dt, action)
        self._state = torch.cat((physics.qpos, physics.qvel), 1)
        return reward.float(), terminated

    def _replace_rows(self, rows: Tensor, fresh: Tensor) -> None:
        p = self.physics
        qpos, qvel = fresh.split((self.nq, self.nv), 1)
        if rows.dtype == torch.bool:  # every env drawn, kept where the mask is False: no host sync
            p.qpos.copy_(torch.where(rows[:, None], qpos, p.qpos))
            p.qvel.copy_(torch.where(rows[:, None], qvel, p.qvel))
            for t in (p.ctrl, p.qacc_warmstart, p.cfrc_ext):  # mj_resetData's zeros that the next step reads
                t.masked_fill_(rows.view(-1, *[1] * (t.dim() - 1)), 0.0)
        else:
            p.qpos.index_copy_(0, rows, qpos)
            p.qvel.index_copy_(0, rows, qvel)
            for t in (p.ctrl, p.qacc_warmstart, p.cfrc_ext):
                t.index_fill_(0, rows, 0.0)
        # derived quantities follow, as set_state's mj_forward makes them (for every world: MuJoCo Warp
        # has no per-world forward; the others' observations were taken before, and their next step
        # recomputes everything from qpos, qvel and ctrl anyway)
        p.forward()
        obs, pos = self._observe_physics(), self._position()
        if self._obs is None or self._pos is None:
            self._obs, self._pos = obs, pos
        elif rows.dtype == torch.bool:
            self._obs = torch.where(rows[:, None], obs, self._obs)  # out of place: the last step returned it
            self._pos = torch.where(rows[:, None], pos, self._pos)
        else:
            self._obs = self._obs.index_copy(0, rows, obs[rows])
            self._pos = self._pos.index_copy(0, rows, pos[rows])
        self._state = torch.cat((p.qpos, p.qvel), 1)

    def _observation(self) -> Tensor:
        assert self._obs is not None
        return self._obs

    def _set_state(self, value: Tensor) -> None:
        self._obs = self._pos = None
        self._replace_rows(torch.arange(self.num_envs, device=self.device), value)


class LocomotionEnv(SingleEnv):
    """One env of a :class:`LocomotionVectorEnv` as a numpy ``gymnasium.Env`` (float32, like the physics)."""

    def __init__(self, render_mode: str | None = None, device: Device = "cpu", **kwargs: Any) -> None:
        super().__init__(render_mode, device, torch.float32, **kwargs)
