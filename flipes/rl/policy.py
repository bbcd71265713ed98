"""MLP policies of Flipout layers for Box and Discrete action spaces."""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import Tensor, nn

from flipes.nn import FlipoutLinear
from flipes.rl.normalize import RunningNorm


class MLPPolicy(nn.Module):
    r"""Deterministic policy: normalized observation -> Flipout MLP -> action.

    Discrete actions are the argmax of the logits; Box actions are ``tanh`` squashed into the
    bounds (unbounded dimensions are left linear).

    Args:
        observation_space: a ``Box`` of observations (flattened).
        action_space: ``Discrete`` or ``Box``.
        hidden: widths of the hidden layers.
        activation: the hidden nonlinearity.
        normalize: keep running observation statistics (``self.obs_norm``).

    Shape:
        ``(*, obs_dim) -> (*,)`` (Discrete) or ``(*, *action_shape)`` (Box); inside a population
        ``*`` starts with the members.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(
                f"MLPPolicy needs a Box observation space, got {observation_space}; "
                "flatten it (gymnasium.wrappers.FlattenObservation) or write a policy from flipes.nn layers"
            )
        if isinstance(action_space, gym.spaces.Discrete):
            out, self.discrete, self.action_shape = int(action_space.n), True, ()
            self.action_start = int(action_space.start)
        elif isinstance(action_space, gym.spaces.Box):
            out, self.discrete, self.action_shape = math.prod(action_space.shape), False, tuple(action_space.shape)
            low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten()
            high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten()
            self.register_buffer("bounded", torch.isfinite(low) & torch.isfinite(high))
            self.register_buffer("center", torch.where(self.bounded, (low + high) / 2, 0.0))
            self.register_buffer("scale", torch.where(self.bounded, (high - low) / 2, 1.0))
        else:
            raise ValueError(
                f"MLPPolicy handles Discrete and Box action spaces, got {type(action_space).__name__}; "
                "write your own policy module from flipes.nn layers for this space"
            )
        self.obs_shape = tuple(observation_space.shape)
        obs_dim = math.prod(self.obs_shape)
        self.obs_norm = RunningNorm(obs_dim) if normalize else None
        sizes = [obs_dim, *hidden, out]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(FlipoutLinear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor) -> Tensor:
        obs = obs.to(self.net[0].weight.dtype)  # e.g. MuJoCo's float64 observations
        if len(self.obs_shape) != 1:
            obs = obs.flatten(-len(self.obs_shape))
        x = self.obs_norm(obs) if self.obs_norm is not None else obs
        z = self.net(x)
        if self.discrete:
            return z.argmax(-1) + self.action_start
        z = torch.where(self.bounded, torch.tanh(z), z) * self.scale + self.center
        return z.view(*z.shape[:-1], *self.action_shape)
