"""Dict and Tuple observations (goal-conditioned envs, dm_control's) as one Box, for every engine.

flipes' rollouts, observation statistics, evaluation and export handle one tensor of observations.
A ``Dict`` or ``Tuple`` observation space whose leaves are ``Box`` or ``MultiBinary`` spaces is
flattened the way ``gymnasium.spaces.flatten`` does it (a Dict's entries in the order of its
``spaces``, a Tuple's in order, each leaf flattened, one dtype for all), so that a batch of them
and ``gymnasium.wrappers.FlattenObservation`` over one env give the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

STRUCTURED = (gym.spaces.Dict, gym.spaces.Tuple)


class SpaceError(ValueError):
    """An observation space flipes cannot flatten into one Box; the message names the entry and the fix."""


def flat_observation_space(space: gym.Space) -> gym.spaces.Box | None:
    """The ``Box`` that ``space`` (a Dict or Tuple of Box and MultiBinary leaves, nested or not) is
    flattened into; ``None`` for any other space, which stays as it is.

    Raises:
        SpaceError: a Dict or Tuple with a leaf of another kind (a Discrete entry: its one-hot
            would be a choice flipes makes silently), naming it and the fix.
    """
    if not isinstance(space, STRUCTURED):
        return None
    for path, leaf in _leaves(space, ""):
        if not isinstance(leaf, gym.spaces.Box | gym.spaces.MultiBinary):
            raise SpaceError(
                f"observations of {type(space).__name__} spaces are flattened into one Box, but entry {path!r} is "
                f"{leaf}; flipes flattens Box and MultiBinary entries only: wrap the env in "
                "gymnasium.wrappers.FlattenObservation (one-hot for Discrete) when you register it"
            )
    return gym.spaces.flatten_space(space)  # type: ignore[return-value]  # Box and MultiBinary leaves flatten to a Box


def inward_bounds(low: Any, high: Any, dtype: torch.dtype, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """A Box's bounds ``low`` and ``high`` (arrays, in any float dtype) in ``dtype``, each rounded toward the inside where
    ``dtype`` cannot hold it exactly: float32's nearest to a float64 bound of 0.1 lies above it, so an action clamped to
    it would lie outside the space. Values clamped to these lie within the space's own bounds."""
    # worked out on the host, then moved: MPS has no float64 (ActionNoise asks once per rollout, on the actions' device)
    exact = [torch.as_tensor(np.asarray(b, dtype=np.float64), device="cpu") for b in (low, high)]
    near = [b.to(dtype) for b in exact]
    outside = (near[0].double() < exact[0], near[1].double() > exact[1])
    towards = (torch.full_like(near[0], math.inf), torch.full_like(near[1], -math.inf))
    lo, hi = (torch.where(o, torch.nextafter(b, t), b).to(device) for b, o, t in zip(near, outside, towards, strict=True))
    return lo, hi


def layout(space: gym.Space) -> str:
    """Where each entry of a flattened Dict or Tuple lands: ``"position 0:8, velocity 8:17"``."""
    parts, at = [], 0
    for path, leaf in _leaves(space, ""):
        size = int(np.prod(leaf.shape))
        parts.append(f"{path} {at}:{at + size}")
        at += size
    return ", ".join(parts)


def flatten_observations(space: gym.Space, obs: Any, batch_dims: int = 1) -> Any:
    """A batch of ``space``'s observations (a dict or tuple of arrays or tensors, each with
    ``batch_dims`` leading batch dimensions) as one array or tensor ``(*batch, features)`` in the
    dtype of :func:`flat_observation_space`; tensors stay on their device."""
    flat = flat_observation_space(space)
    assert flat is not None
    leaves = [x for _, x in _values(space, obs)]
    if isinstance(leaves[0], Tensor):
        dtype = torch.from_numpy(np.zeros(0, flat.dtype)).dtype
        return torch.cat([x.reshape(*x.shape[:batch_dims], -1).to(dtype) for x in leaves], dim=-1)
    return np.concatenate([np.asarray(x).reshape(*np.shape(x)[:batch_dims], -1).astype(flat.dtype) for x in leaves], axis=-1)


def batch_dims(space: gym.Space, obs: Any) -> int:
    """How many leading batch dimensions ``obs`` has: 0 for one observation of ``space`` (a Dict or Tuple), 1 for a
    vector env's batch, and so on; read off its first entry."""
    leaf_space, leaf = next(_values(space, obs))
    return len(np.shape(leaf)) - len(leaf_space.shape)


def holds_tensors(obs: Any) -> bool:
    """Whether observations (a Dict or Tuple one by its first entry) are torch tensors, not numpy arrays."""
    while isinstance(obs, dict | tuple | list):
        obs = next(iter(obs.values())) if isinstance(obs, dict) else obs[0]
    return isinstance(obs, Tensor)


def _leaves(space: gym.Space, path: str) -> Iterator[tuple[str, gym.Space]]:
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            yield from _leaves(sub, f"{path}.{key}" if path else str(key))
    elif isinstance(space, gym.spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            yield from _leaves(sub, f"{path}[{i}]")
    else:
        yield path, space


def _values(space: gym.Space, obs: Any) -> Iterator[tuple[gym.Space, Any]]:
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            yield from _values(sub, obs[key])
    elif isinstance(space, gym.spaces.Tuple):
        for sub, x in zip(space.spaces, obs, strict=True):
            yield from _values(sub, x)
    else:
        yield space, obs
