"""Policies with memory in flipes' rollouts: ``forward(obs, state) -> (action, state)``.

Flipout's recurrent layers keep a member's signs for the whole episode (Wen et al., ICLR 2018,
arXiv:1803.04386): one weight sample per member and episode, as ES needs. A rollout runs one
episode in every env and masks the envs that finished, so a policy's state starts at ``None``
with the episodes and is never reset within a rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from flipes.errors import UsageError
from flipes.nn import FlipoutGRUCell, FlipoutLinear, uncompiled
from flipes.rl.policy import CNNPolicy, MLPPolicy, SpacePolicy, check_widths, mlp


class RecurrentPolicy(nn.Module):
    """Base class of policies with memory: ``forward(obs, state) -> (action, state)``, ``state`` is
    ``None`` at the first step of the episodes and whatever the previous step returned after it.

    flipes' rollouts (``RolloutFitness``, evaluation, ``flipes evaluate``) carry the state of a
    ``RecurrentPolicy`` from step to step; a plain module is called as ``model(obs)``. Inside a
    population, ``obs`` is members first, as for any model.

    It takes no arguments of its own: a subclass takes what it needs (:class:`GRUPolicy`: the spaces and the
    widths).

    Shape:
        - obs: ``(*, obs_dim)``, one row per env; in a population ``(N, K, obs_dim)``, the ``K``
          episodes of each of the ``N`` members, members first (``RolloutFitness``)
        - action: ``(*)`` integers for a ``Discrete`` space, ``(*, *action_shape)`` for a ``Box``
        - state: anything the subclass keeps per env (a tensor, a tuple of them); ``None`` at the
          first step, then the ``state`` the previous call returned, for the same rows
    """

    def forward(self, obs: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One step of every env: ``(action, next state)`` from ``obs`` and the previous step's ``state``
        (``None`` at an episode batch's first step). A subclass defines it. flipes always passes ``state``: no
        default here, so that a subclass's ``forward(self, obs, state)`` without one is a valid override to a type
        checker."""
        raise NotImplementedError(
            f"{type(self).__name__} reached RecurrentPolicy.forward, which a subclass defines as forward(obs, state) -> "
            "(actions, state); a class mixing RecurrentPolicy into a module of its own lists RecurrentPolicy last, "
            "class Mine(MyModule, RecurrentPolicy), so that the module's forward comes first"
        )


def is_recurrent(policy: Any) -> bool:
    """Whether ``policy`` is a :class:`RecurrentPolicy`, or ``torch.compile`` of one (the wrapper is no subclass)."""
    return isinstance(uncompiled(policy) if isinstance(policy, nn.Module) else policy, RecurrentPolicy)


def stepper(policy: Callable[..., Any]) -> Callable[[Tensor], Tensor]:
    """``act(obs) -> action`` for one batch of episodes: ``policy`` itself, or for a
    :class:`RecurrentPolicy` (``torch.compile`` of one too) a function carrying its state from call to
    call, from ``None``; a UsageError names ``(actions, state)`` where the policy returns anything else (actions alone
    would otherwise be split along their first dim into an action and a state)."""
    if not is_recurrent(policy):
        return policy
    state: Any = None

    def act(obs: Tensor) -> Tensor:
        nonlocal state
        out = policy(obs, state)
        # unpacked as it is, actions alone would split along their first dim: 2 envs' actions as an action and a state
        if not isinstance(out, tuple | list) or len(out) != 2:  # [actions, state] unpacks alike
            raise UsageError(
                "--model",
                f"{type(uncompiled(policy)).__name__} is a RecurrentPolicy, and its forward(obs, state) returned "
                + (f"a {type(out).__name__} of {len(out)}" if isinstance(out, tuple | list) else f"a {type(out).__name__}")
                + ", not (actions, state)",
                "return the actions and the state the next step takes, return actions, state (the state None at an "
                "episode's start); a policy without memory subclasses torch.nn.Module alone and returns the actions",
            )
        action, state = out
        return action

    return act


class GRUPolicy(SpacePolicy, RecurrentPolicy):
    r"""Deterministic policy with memory: normalized observation -> Flipout MLP encoder -> Flipout
    GRU cell -> Flipout linear head -> action (as :class:`~flipes.rl.MLPPolicy`'s).

    Args:
        observation_space: a ``Box`` or ``MultiBinary`` of observations (flattened), ``Discrete`` ones (one-hot), or
            a ``Dict`` or ``Tuple`` of Box and MultiBinary entries (flattened as flipes' envs flatten them).
        action_space: ``Discrete``, ``MultiDiscrete``, ``MultiBinary`` or ``Box``.
        hidden: widths of the encoder's layers, then the GRU's hidden size (the last width):
            ``(64, 64)`` is ``Linear(obs, 64) -> tanh -> GRUCell(64, 64) -> Linear(64, actions)``;
            one width is a GRU on the observations.
        activation: the encoder's nonlinearity.
        normalize: keep running observation statistics (``self.obs_norm``).

    Shape:
        ``(*, obs_dim), state -> (action, state)`` with ``state`` ``(*, hidden[-1])`` (``None`` at
        the first step); inside a population ``*`` starts with the members. Numpy observations give numpy
        actions (the state stays a tensor; a numpy one is taken as its tensor). A state of another shape is a
        ValueError naming the one it takes.
    """

    def __init__(
        self,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        normalize: bool = True,
    ) -> None:
        super().__init__(observation_space, action_space, normalize)
        hidden = check_widths(hidden, "GRUPolicy")
        if not hidden:
            raise ValueError("GRUPolicy needs at least one width in hidden: the GRU's hidden size")
        sizes = [self.obs_dim, *hidden[:-1]]
        self.encoder = mlp(sizes, activation, last=True)
        self.cell = FlipoutGRUCell(sizes[-1], hidden[-1])
        self.head = FlipoutLinear(hidden[-1], self.action_dim)

    # numpy obs in, numpy actions out (as MLPPolicy), where RecurrentPolicy promises subclasses' tensors only
    def forward(self, obs: Tensor | np.ndarray, state: Tensor | None = None) -> tuple[Tensor | np.ndarray, Tensor]:  # type: ignore[override]
        x = self.encoder(self.observe(obs, self.head.weight.dtype))
        rows = x.reshape(-1, x.shape[-1])  # the cell takes (batch, features): members first stay first
        if state is not None and (not isinstance(state, Tensor) or state.shape != (*x.shape[:-1], self.cell.hidden_size)):
            state = self._state(state, x)
        h = self.cell(rows, None if state is None else state.reshape(rows.shape[0], -1)).view(*x.shape[:-1], -1)
        return self.as_given(self.action(self.head(h)), obs), h

    def _state(self, state: Any, x: Tensor) -> Tensor:
        """A state given as numpy (a gymnasium loop's) as a tensor; else a ValueError naming the shape it takes: reshaped
        as it came, one of another batch layout (episodes before members) would hand each row another env's memory."""
        if not isinstance(state, Tensor):
            state = torch.as_tensor(np.asarray(state), dtype=x.dtype, device=x.device)
        expected = (*x.shape[:-1], self.cell.hidden_size)
        if state.shape != expected:
            raise ValueError(
                f"GRUPolicy takes the state its previous step returned, of shape {expected} (the observations' batch "
                f"{tuple(x.shape[:-1])}, then hidden size {self.cell.hidden_size}), got {tuple(state.shape)}; pass None at an "
                "episode's start, then the state each call returns"
            )
        return state


POLICIES: MappingProxyType[str, type[SpacePolicy]] = MappingProxyType({"mlp": MLPPolicy, "gru": GRUPolicy, "cnn": CNNPolicy})
"""The policies ``flipes train --policy`` builds for an env, by name."""
