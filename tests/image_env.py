"""A tiny image env for the CNN policy's tests, registered as ``cnntest/BrightSpot-v0`` on import (``--env
image_env:cnntest/BrightSpot-v0`` with ``tests/`` on the path, in MPI subprocesses too)."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

SIDE, SPOT = 36, 8  # the Nature torso's smallest image; an 8x8 spot (one pixel's signal is too faint for ES in seconds)


class BrightSpot(gym.vector.VectorEnv):
    """One-step episodes: a black ``(1, 36, 36)`` uint8 image (``(36, 36, 1)`` with ``channels_last``) holding one
    white 8x8 spot at a random place; action 0 pays 1 where the spot's centre is in the left half, action 1 where it
    is in the right half. Env ``i`` reset with seed ``s`` draws its spot from ``s + i`` alone (gymnasium's convention),
    so a member's episodes do not depend on how the population is split; unseeded, from torch's global generator.
    Every tensor is made on the host with ``device=`` (the meta-device test)."""

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, channels_last: bool = False) -> None:
        self.num_envs, self.channels_last = num_envs, channels_last
        shape = (SIDE, SIDE, 1) if channels_last else (1, SIDE, SIDE)
        self.single_observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None) -> tuple[Tensor, dict]:
        if seed is None:  # gymnasium's unseeded reset: fresh spots
            seed = int(torch.randint(2**31 - self.num_envs, ()))
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
        corners = [
            torch.randint(0, SIDE - SPOT + 1, (2,), generator=torch.Generator("cpu").manual_seed(s), device="cpu") for s in seeds
        ]
        image = torch.zeros(self.num_envs, SIDE, SIDE, dtype=torch.uint8, device="cpu")
        for i, (row, col) in enumerate(corners):
            image[i, row : row + SPOT, col : col + SPOT] = 255
        self.right = torch.stack(corners)[:, 1] + SPOT / 2 > SIDE / 2
        self.obs = image.unsqueeze(-1 if self.channels_last else 1)
        return self.obs.clone(), {}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        reward = (actions.cpu() == self.right.long()).double()
        done = torch.ones(self.num_envs, dtype=torch.bool, device="cpu")
        return self.obs.clone(), reward, done, torch.zeros_like(done), {}


gym.register("cnntest/BrightSpot-v0", vector_entry_point=BrightSpot)
gym.register("cnntest/BrightSpotLast-v0", vector_entry_point=BrightSpot, kwargs={"channels_last": True})
