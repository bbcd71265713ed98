"""Making vector environments: flipes' own torch envs, or any gymnasium id through an adapter."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor


class NumpyToTorch(gym.vector.VectorWrapper):
    """A numpy vector env seen through torch: actions in, observations, rewards and flags out.

    (gymnasium's own wrapper needs the extra ``array_api_compat`` package for the same 20 lines.)
    """

    def __init__(self, env: gym.vector.VectorEnv, device: str | torch.device = "cpu") -> None:
        super().__init__(env)
        self.device = torch.device(device)

    def _torch(self, x: Any) -> Tensor:
        return torch.as_tensor(np.asarray(x), device=self.device)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._torch(obs), info

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        obs, reward, terminated, truncated, info = self.env.step(a)
        return self._torch(obs), self._torch(reward), self._torch(terminated), self._torch(truncated), info


def make_vector_env(env_id: str, num_envs: int, device: str | torch.device = "cpu") -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies that takes and returns torch tensors on ``device``.

    ``flipes/...`` ids are batched torch envs (``envs/``) that step on ``device`` itself; any other
    gymnasium id (e.g. ``HalfCheetah-v5``) runs gymnasium's own vector env on the CPU, converted
    numpy<->torch at this boundary only.
    """
    if env_id.startswith("flipes/"):
        import envs  # noqa: F401  registers the flipes/ ids with gymnasium

        try:
            return gym.make_vec(env_id, num_envs=num_envs, device=device)
        except gym.error.Error as e:
            raise ValueError(f"unknown env id {env_id!r}: flipes has {_flipes_ids()}") from e
    try:
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    except gym.error.Error as e:
        raise ValueError(
            f"unknown env id {env_id!r} ({e}); use a flipes id ({_flipes_ids()}) or a registered gymnasium id "
            "(gymnasium.pprint_registry() lists them; MuJoCo ids need `pip install mujoco`)"
        ) from e
    return NumpyToTorch(env, device=device)


def _flipes_ids() -> str:
    return ", ".join(sorted(k for k in gym.registry if k.startswith("flipes/")))
