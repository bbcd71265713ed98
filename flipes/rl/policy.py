"""Policies of Flipout layers for Box, Discrete, MultiDiscrete and MultiBinary action spaces."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from flipes.es.checks import as_index
from flipes.nn import FlipoutConv2d, FlipoutLinear
from flipes.rl.normalize import RunningNorm
from flipes.rl.spaces import (
    STRUCTURED,
    batch_dims,
    flat_observation_space,
    flatten_observations,
    holds_tensors,
    inward_bounds,
)


class SpacePolicy(nn.Module):
    """What every flipes policy does with the env's spaces: observations flattened, cast to the
    policy's dtype and normalized (``self.obs_norm``); outputs ``z`` of ``action_dim`` mapped to
    actions: the argmax for ``Discrete``, one argmax per component for ``MultiDiscrete`` (``action_dim``
    is the sum of its ``nvec``), ``z > 0`` for ``MultiBinary``, ``tanh`` squashed into the bounds for
    ``Box`` (unbounded dimensions are left linear, clipped at a bound on one side; an integer Box's rounded into
    its dtype). ``Discrete``
    observations are one-hot (not normalized).

    Args:
        observation_space: a ``Box`` or ``MultiBinary`` of observations (flattened), ``Discrete`` ones (one-hot), or
            a ``Dict`` or ``Tuple`` of Box and MultiBinary entries (flattened as flipes' envs flatten them).
        action_space: ``Discrete``, ``MultiDiscrete``, ``MultiBinary`` or ``Box``.
        normalize: keep running observation statistics (``self.obs_norm``).
    """

    # set in __init__ for a Box; here for a policy unpickled from before they existed: the where path, and no
    # one-sided clip (a space of that time could not ask for one)
    all_bounded = False
    half_bounded = False
    clipped = False
    action_dtype: np.dtype | None = None  # and no cast of numpy actions
    integer_box: torch.dtype | None = None  # an integer Box's actions: rounded into its dtype
    # the env's own Dict or Tuple space, where the policy was built on its flattened Box (flipes.load_policy sets it):
    # gymnasium's observations of it are then taken as they come, as the engines flatten them
    source_observation_space: gym.Space[Any] | None = None
    action_shape: tuple[int, ...]  # () for Discrete: one integer per env

    def __init__(self, observation_space: gym.Space[Any], action_space: gym.Space[Any], normalize: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(observation_space, STRUCTURED):  # a Dict or Tuple: on the Box flipes' envs flatten it into
            self.source_observation_space = observation_space
            observation_space = flat_observation_space(observation_space)  # a SpaceError (ValueError) naming the fix
        # MultiBinary observations are 0/1 features, as flipes takes them inside a Dict
        if not isinstance(observation_space, gym.spaces.Box | gym.spaces.Discrete | gym.spaces.MultiBinary):
            raise ValueError(
                f"{name} needs a Box, Discrete or MultiBinary observation space, got {observation_space}; wrap the env in "
                "gymnasium.wrappers.FlattenObservation (one-hot for MultiDiscrete) when you register it, or write a policy "
                "from flipes.nn layers"
            )
        kinds = (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary, gym.spaces.Box)
        # the space's kind, also for a subclass of one (whose own name would send it down another branch)
        self.kind = next((k.__name__ for k in kinds if isinstance(action_space, k)), type(action_space).__name__)
        if isinstance(action_space, gym.spaces.Discrete):
            self.action_dim, self.discrete, self.action_shape = int(action_space.n), True, ()
            self.action_start = int(action_space.start)
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.discrete, self.action_shape = False, tuple(action_space.shape)
            nvec = torch.as_tensor(action_space.nvec, dtype=torch.int64).flatten()
            self.action_dim, widest = int(nvec.sum()), int(nvec.max())
            # component i's logits are z[..., first[i] : first[i] + nvec[i]]: gathered into a padded
            # (components, widest) table, the padding -inf, one argmax serves components of any widths
            first = torch.cumsum(nvec, 0) - nvec
            slot = torch.arange(widest)
            self.register_buffer("logit_index", (first[:, None] + slot).clamp(max=self.action_dim - 1))
            self.register_buffer("logit_pad", slot >= nvec[:, None])
            self.register_buffer("action_starts", torch.as_tensor(action_space.start, dtype=torch.int64).flatten())
        elif isinstance(action_space, gym.spaces.MultiBinary):
            self.discrete, self.action_shape = False, tuple(action_space.shape)
            self.action_dim = math.prod(self.action_shape)
        elif isinstance(action_space, gym.spaces.Box):
            self.action_dim, self.discrete, self.action_shape = math.prod(action_space.shape), False, tuple(action_space.shape)
            low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten()
            high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten()
            self.register_buffer("bounded", torch.isfinite(low) & torch.isfinite(high))
            self.register_buffer("center", torch.where(self.bounded, (low + high) / 2, 0.0))
            self.register_buffer("scale", torch.where(self.bounded, (high - low) / 2, 1.0))
            # a dimension bounded on one side only stays linear, clipped at its bound; not saved (checkpoints
            # written before it lack them, and they are the space's)
            self.half_bounded = bool((torch.isfinite(low) ^ torch.isfinite(high)).any())
            # every dimension bounded (MuJoCo's, most envs'): tanh alone, the same numbers without a where per step
            self.all_bounded = bool(self.bounded.all())
            self.clipped = self.half_bounded
            if np.issubdtype(action_space.dtype, np.floating):  # an integer Box's rounded actions are clamped exactly below
                # the clip's bounds, rounded inward: float32's nearest to a float64 bound may lie outside it
                low, high = inward_bounds(action_space.low.flatten(), action_space.high.flatten(), torch.float32)
                # tanh's ±1 can round past a bound not symmetric about 0 (center + scale: 0.8500001 of [-2.8, 0.85]),
                # clipped then too. Rounding is monotone, so ±1 give the extremes; taken exactly (float64), float32's sums
                # and a double() policy's stay within the bounds wherever these do. Symmetric bounds (flipes' envs,
                # MuJoCo's) never overshoot and keep their arithmetic.
                reach = (self.center.double() - self.scale.double(), self.center.double() + self.scale.double())
                overshoot = self.bounded & ((reach[0] < low.double()) | (reach[1] > high.double()))
                self.clipped = self.half_bounded or bool(overshoot.any())
            self.register_buffer("low", low, persistent=False)
            self.register_buffer("high", high, persistent=False)
        else:
            raise ValueError(
                f"{name} handles Discrete, MultiDiscrete, MultiBinary and Box action spaces, got {type(action_space).__name__}; "
                "write your own policy module from flipes.nn layers for this space"
            )
        self.action_dtype = np.dtype(action_space.dtype) if action_space.dtype is not None else None
        if self.kind == "Box" and self.action_dtype is not None and self.action_dtype.kind in "iu":
            # an integer Box (counts, pixel levels) takes integers: a float action would reach the env as it is
            self.integer_box = torch.from_numpy(np.zeros(0, self.action_dtype)).dtype
            # the exact bounds, as int64: float32's nearest to one past 2**24 may lie outside it (2**31 - 1 is 2**31,
            # which the cast wraps to -2**31), so the rounded actions are clamped to these after leaving floats
            big = np.iinfo(np.int64).max  # a uint64 Box's top, beyond int64
            for bound, values in (("int_low", action_space.low), ("int_high", action_space.high)):
                exact = [min(int(v), big) for v in np.asarray(values).flat]
                self.register_buffer(bound, torch.tensor(exact, dtype=torch.int64).view(self.action_shape), persistent=False)
        self.obs_shape = tuple(observation_space.shape)
        self.obs_dim = math.prod(self.obs_shape)
        self.obs_start: int | None = None
        if isinstance(observation_space, gym.spaces.Discrete):  # a state index (Taxi, FrozenLake): one-hot
            self.obs_dim, self.obs_start = int(observation_space.n), int(observation_space.start)
            normalize = False  # one-hot rows need no statistics, and rollouts record the raw indices
        self.obs_norm = RunningNorm(self.obs_dim) if normalize else None

    def observe(self, obs: Tensor | np.ndarray, dtype: torch.dtype) -> Tensor:
        """``(*, *obs_shape) -> (*, obs_dim)`` in ``dtype`` (e.g. from MuJoCo's float64), normalized;
        Discrete observations ``(*,)`` one-hot. A numpy array (or a number) is taken as a tensor on the
        policy's device: what a gymnasium env of one's own returns, ``policy(env.reset()[0])``; a Dict or Tuple one
        is flattened as flipes' engines flatten it, once ``source_observation_space`` names its space."""
        if isinstance(obs, dict | tuple):
            obs = self.flat(obs)
        if not isinstance(obs, Tensor):
            obs = torch.as_tensor(np.asarray(obs), device=next(self.parameters()).device)
        if self.obs_start is not None:
            return nn.functional.one_hot(obs.long() - self.obs_start, self.obs_dim).to(dtype)
        if self.obs_shape and obs.shape[-len(self.obs_shape) :] != self.obs_shape:  # not torch's from the first layer
            raise ValueError(
                f"{type(self).__name__} takes observations of shape (..., {', '.join(map(str, self.obs_shape))}) (its "
                f"env's observation space), got shape {tuple(obs.shape)}; pass the env's observations, one or a batch"
            )
        if obs.dtype != dtype:  # a rollout's steps mostly come in the dtype already: no op for the no-op
            obs = obs.to(dtype)
        if not self.obs_shape:  # a scalar Box: one feature
            obs = obs.unsqueeze(-1)
        elif len(self.obs_shape) != 1:
            obs = obs.flatten(-len(self.obs_shape))
        return self.obs_norm(obs) if self.obs_norm is not None else obs

    def flat(self, obs: dict[str, Any] | tuple[Any, ...]) -> Tensor | np.ndarray:
        """A Dict or Tuple observation, or a batch of them, as the one Box of features the policy acts on."""
        source = self.source_observation_space
        if not isinstance(source, STRUCTURED):
            raise ValueError(
                f"{type(self).__name__} takes observations as one array, got a {type(obs).__name__}; flatten them as "
                "flipes' envs do, gymnasium.spaces.flatten(env.observation_space, obs), or take the policy from "
                "flipes.load_policy, which does"
            )
        return flatten_observations(source, obs, batch_dims=batch_dims(source, obs))

    def as_given(self, actions: Tensor, obs: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``actions`` as the observations came: a tensor for a tensor; for a numpy array (or a number) a numpy
        array of the action space's dtype (one observation's ``Discrete`` action a numpy integer), what the
        gymnasium env that gave the observation takes, ``env.step(policy(obs))``."""
        if holds_tensors(obs):  # a Dict's or Tuple's entries: tensors or arrays alike
            return actions
        out = actions.detach().cpu().numpy()
        if self.action_dtype is not None:
            if self.action_dtype.kind in "iu" and out.dtype.kind == "f":  # an integer Box: rounded, not truncated to 0
                out = np.rint(out)
            out = out.astype(self.action_dtype, copy=False)
        return out[()] if out.ndim == 0 else out

    def action(self, z: Tensor) -> Tensor:
        """``(*, action_dim)`` outputs -> ``(*,)`` (Discrete) or ``(*, *action_shape)`` (the others) actions."""
        if self.discrete:  # actions from 0 (most envs): no op to add the start
            return z.argmax(-1) + self.action_start if self.action_start else z.argmax(-1)
        if self.kind == "MultiDiscrete":
            a = z[..., self.logit_index].masked_fill(self.logit_pad, -math.inf).argmax(-1) + self.action_starts
            return a.view(*z.shape[:-1], *self.action_shape)
        if self.kind == "MultiBinary":  # gymnasium's dtype for it
            return (z > 0).to(torch.int8).view(*z.shape[:-1], *self.action_shape)
        squashed = torch.tanh(z) if self.all_bounded else torch.where(self.bounded, torch.tanh(z), z)
        z = squashed * self.scale + self.center
        if self.clipped:
            z = torch.maximum(torch.minimum(z, self.high.to(z.dtype)), self.low.to(z.dtype))
        if self.integer_box is not None:  # float32 at least (not float64: MPS has none), clamped to float32's largest
            # below 2**63 so that the int64 cast is exact, then to the exact bounds
            wide = z if z.dtype in (torch.float32, torch.float64) else z.float()
            whole = wide.round().clamp(-(2.0**63), 2.0**63 - 2.0**39).to(torch.int64).view(z.shape[:-1] + self.action_shape)
            return torch.minimum(torch.maximum(whole, self.int_low), self.int_high).to(self.integer_box)
        return z.view(z.shape[:-1] + self.action_shape)  # a tuple: one scalar action is a view to shape ()


def check_widths(hidden: Any, policy: str) -> list[int]:
    """``hidden`` as a list of layer widths, each an integer of at least 1 (numpy's too); else a TypeError or
    ValueError naming ``policy`` (a width of 0 built a layer of no outputs, -1 failed inside torch)."""
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Iterable):
        raise TypeError(f"{policy}: hidden is a sequence of layer widths, e.g. hidden=(64, 64), got {hidden!r}")
    hidden = list(hidden)
    widths = [as_index(h) for h in hidden]
    if any(w is None or w < 1 for w in widths):
        raise ValueError(f"{policy}: hidden layer widths must be integers of at least 1, got {hidden}; e.g. hidden=(64, 64)")
    return widths  # type: ignore[return-value]


def mlp(sizes: Sequence[int], activation: type[nn.Module], last: bool = False) -> nn.Sequential:
    """Flipout Linear layers of these widths, ``activation`` between them (and after the last if ``last``)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(FlipoutLinear(sizes[i], sizes[i + 1]))
        if last or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPPolicy(SpacePolicy):
    r"""Deterministic policy: normalized observation -> Flipout MLP -> action.

    Discrete actions are the argmax of the logits (MultiDiscrete: one argmax per component, MultiBinary:
    the signs of the outputs); Box actions are ``tanh`` squashed into the bounds (unbounded dimensions
    are left linear, clipped at a bound on one side).

    Args:
        observation_space: a ``Box`` or ``MultiBinary`` of observations (flattened), ``Discrete`` ones (one-hot), or
            a ``Dict`` or ``Tuple`` of Box and MultiBinary entries (flattened as flipes' envs flatten them).
        action_space: ``Discrete``, ``MultiDiscrete``, ``MultiBinary`` or ``Box``.
        hidden: widths of the hidden layers.
        activation: the hidden nonlinearity.
        normalize: keep running observation statistics (``self.obs_norm``; never for Discrete ones).

    Shape:
        ``(*, obs_dim) -> (*,)`` (Discrete) or ``(*, *action_shape)`` (the others); inside a population
        ``*`` starts with the members. Observations are tensors, or numpy arrays as a gymnasium env returns
        them, whose actions are then numpy arrays the env takes: ``env.step(policy(obs))``.
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
        self.net = mlp([self.obs_dim, *check_widths(hidden, "MLPPolicy"), self.action_dim], activation)

    def forward(self, obs: Tensor | np.ndarray) -> Tensor | np.ndarray:
        x = self.observe(obs, self.net[0].weight.dtype)
        if x.dim() == 3 and x.shape[1] == 1:  # (members, 1 episode, features), a rollout's: through the layers as 2-D
            # rows (the same products: a Flipout layer takes (N, in) and (N, 1, in) alike), one view each way instead of
            # a reshape and a view in every layer
            a = self.action(self.net(x.view(x.shape[0], x.shape[2])))
            return self.as_given(a.view(a.shape[0], 1, *a.shape[1:]), obs)
        return self.as_given(self.action(self.net(x)), obs)


NATURE_TORSO: tuple[tuple[int, int, int], ...] = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
"""The Nature-DQN convolutions (Mnih et al. 2015), ``(out_channels, kernel, stride)`` each, no padding."""


def torso_min_size(torso: Sequence[tuple[int, int, int]] = NATURE_TORSO) -> int:
    """The smallest image side these unpadded convolutions leave at least one pixel of (36 for the Nature torso)."""
    side = 1
    for _, kernel, stride in reversed(torso):
        side = (side - 1) * stride + kernel
    return side


def _conv_out(side: int, torso: Sequence[tuple[int, int, int]]) -> int:
    for _, kernel, stride in torso:
        side = (side - kernel) // stride + 1
    return side


def _rank_fix(shape: tuple[int, ...] | None, least: int) -> str:
    """The fix for observations that are not one image of rank 3: a grayscale image lacks its channel dim, a stack of
    colour frames has one dim too many, anything else is a vector for the MLP."""
    if shape is not None and len(shape) == 2 and min(shape) >= least:
        return (
            f"a grayscale image without a channel dim: give it one, GrayscaleObservation(env, keep_dim=True) or "
            f"ReshapeObservation(env, (1, {', '.join(map(str, shape))})) from gymnasium.wrappers"
        )
    if shape is not None and len(shape) == 4 and 1 in (shape[1], shape[3]):  # single-channel frames kept their channel dim
        at = 3 if shape[3] == 1 else 1
        kept = shape[:at] + shape[at + 1 :]
        restack = f", or stack frames without one, FrameStackObservation(GrayscaleObservation(env), {shape[0]})"
        return (
            f"single-channel frames stacked with their channel dim of 1: drop it, ReshapeObservation(env, "
            f"({', '.join(map(str, kept))})) from gymnasium.wrappers" + (restack if shape[0] < min(kept[1:]) else "")
        )
    if shape is not None and len(shape) == 4:
        return (
            f"a stack of colour frames: make them grayscale before stacking them, FrameStackObservation("
            f"GrayscaleObservation(env), {shape[0]}) from gymnasium.wrappers gives ({shape[0]}, H, W)"
        )
    return "use --policy mlp (or gru) for vector observations"


class CNNPolicy(SpacePolicy):
    r"""Deterministic policy for image observations: pixels -> the Nature-DQN torso of Flipout convolutions
    (32 8x8 stride 4, 64 4x4 stride 2, 64 3x3 stride 1, ReLU after each) -> Flipout fully connected layers of
    ``hidden`` widths (ReLU) -> action, mapped as :class:`MLPPolicy`'s (argmax for Discrete, tanh into a Box's
    bounds). Inside an ES population every member convolves with its own kernels, all in one batched pass.

    ``uint8`` observations are scaled by 1/255 into [0, 1]; others are taken as they are. Pixels get no
    running normalization (``obs_norm`` is ``None``): per-pixel statistics, frozen per generation, would
    mostly divide near-constant background pixels by tiny deviations.

    Args:
        observation_space: a ``Box`` of rank 3: ``(C, H, W)`` (EnvPool's Atari ids, ``(4, 84, 84)`` frame
            stacks) or ``(H, W, C)`` (gymnasium's ALE); both sides at least :func:`torso_min_size` (36).
        action_space: ``Discrete``, ``MultiDiscrete``, ``MultiBinary`` or ``Box``.
        hidden: widths of the fully connected layers after the torso (the Nature DQN's ``(512,)``); empty:
            the torso's features straight into the action layer.
        activation: the nonlinearity after every convolution and hidden layer.
        channels_last: whether the channels are the last dim; ``None`` guesses: last where the last side is at
            most 4 and the first is larger (``(210, 160, 3)``), or where only that reading leaves both sides at least
            :func:`torso_min_size` (``(84, 84, 5)``), else first (``(4, 84, 84)``).

    Shape:
        ``(*, *obs_shape) -> (*,)`` (Discrete) or ``(*, *action_shape)`` (the others); inside a population
        ``*`` starts with the members, ``(N, K, C, H, W)`` for ``K`` episodes each, and in an evaluation it is
        ``(K, C, H, W)``. Numpy observations give numpy actions, as :class:`MLPPolicy`'s.
    """

    def __init__(
        self,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        hidden: Sequence[int] = (512,),
        activation: type[nn.Module] = nn.ReLU,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__(observation_space, action_space, normalize=False)
        shape = self.obs_shape
        least = torso_min_size()
        if not isinstance(observation_space, gym.spaces.Box) or len(shape) != 3:
            raise ValueError(
                f"CNNPolicy needs image observations, a Box of shape (C, H, W) or (H, W, C), got {observation_space}; "
                + _rank_fix(shape if isinstance(observation_space, gym.spaces.Box) else None, least)
            )
        if channels_last is None:
            # (210, 160, 3) last, (4, 84, 84) first, and last where only that reading leaves sides the torso takes,
            # (84, 84, 5): every shape built before reads as it did (checkpoints load), and where either fits, one does
            channels_last = shape[2] <= 4 < shape[0] or min(shape[1:]) < least <= min(shape[:2])
        self.channels_last = channels_last
        channels, height, width = (shape[2], shape[0], shape[1]) if channels_last else shape
        if min(height, width) < least:
            raise ValueError(
                f"CNNPolicy's Nature-DQN torso (8x8 stride 4, 4x4 stride 2, 3x3 stride 1, unpadded) needs images of at least "
                f"{least}x{least} pixels, got {height}x{width} (observations {shape}, channels "
                f"{'last' if channels_last else 'first'}); make them at least {least}x{least}: an EnvPool Atari id with "
                f"--env-kwargs img_height and img_width of at least {least} (84 by default), another env with "
                "gymnasium.wrappers.ResizeObservation; or write a policy with smaller kernels from flipes.nn layers (--model)"
            )
        self.pixel_scale = 1 / 255 if observation_space.dtype == np.uint8 else 1.0
        layers: list[nn.Module] = []
        for out, kernel, stride in NATURE_TORSO:
            layers += [FlipoutConv2d(channels, out, kernel, stride), activation()]
            channels = out
        self.torso = nn.Sequential(*layers)
        features = channels * _conv_out(height, NATURE_TORSO) * _conv_out(width, NATURE_TORSO)
        self.fc = mlp([features, *check_widths(hidden, "CNNPolicy"), self.action_dim], activation)
        # orthogonal weights of gain √2 and zero biases, as the Atari CNNs of CleanRL and Stable-Baselines3, keep a few
        # pixels' signal through the ReLUs (torch's default biases drown it: every image then gets the same action, and
        # every member the same fitness); the action layer at gain 1, not their 0.01: its outputs feed an argmax, and
        # logits that small are swamped by Adam's first steps on the biases
        layers = [m for m in self.modules() if isinstance(m, FlipoutConv2d | FlipoutLinear)]
        for layer in layers:
            nn.init.orthogonal_(layer.weight, math.sqrt(2) if layer is not layers[-1] else 1.0)
            nn.init.zeros_(layer.bias)

    def pixels(self, obs: Tensor | np.ndarray) -> Tensor:
        """``(*, *obs_shape)`` observations -> ``(*, C, H, W)`` images in the parameters' dtype, scaled (uint8 by 1/255)."""
        first = self.torso[0]
        x = obs if isinstance(obs, Tensor) else torch.as_tensor(np.asarray(obs), device=first.weight.device)
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.obs_shape:
            raise ValueError(
                f"CNNPolicy takes observations of shape (..., {', '.join(map(str, self.obs_shape))}), its observation "
                f"space's, got {tuple(x.shape)}; pass a batch of images as the env returns them"
            )
        x = x.to(first.weight.dtype)
        if self.pixel_scale != 1.0:
            x = x * self.pixel_scale
        return x.movedim(-1, -3) if self.channels_last else x

    @torch.no_grad()
    def init_from_data(self, obs: Tensor | np.ndarray, eps: float = 1e-6) -> None:
        """Data-dependent initialization (the weight-normalization init of Salimans & Kingma 2016, "Weight
        Normalization", sec. 3; LSUV, Mishkin & Matas 2016): layer by layer, from the first, each output channel's
        weights and bias are rescaled and shifted so that its pre-activations on ``obs`` (a reference batch of
        observations, ``(B, *obs_shape)``) have mean 0 and standard deviation 1 over the batch (and the image's
        positions for a convolution). The action layer too: every action's logit then varies from frame to frame
        about a common level, so the argmax follows the image instead of one logit's constant lead.

        Why: Atari frames are mostly constant background, and at the orthogonal init the CNN's logits barely move
        between frames (Pong: a spread of 0.017 against a lead of 0.021), so every member plays one action and
        every member of a generation has the same fitness (OpenAI's ES paper, Salimans et al. 2017, used virtual
        batch normalization for that). Done once, before training: it is only parameters, so checkpoints, resume,
        export and MPI (given the same ``obs`` on every process) need nothing of their own. A channel whose
        pre-activations vary by ``eps`` or less on the batch (dead, or blind to it) keeps its scale and is only
        shifted to mean 0.
        """
        x = self.pixels(obs)
        x = x.reshape(-1, *x.shape[-3:])
        for module in (*self.torso, nn.Flatten(), *self.fc):
            if isinstance(module, FlipoutConv2d | FlipoutLinear):
                y = module(x)
                dims = (0, 2, 3) if y.dim() == 4 else (0,)  # per channel: over the batch and the positions
                mean, std = y.mean(dims), y.std(dims)
                scale = torch.where(std > eps, 1 / std, torch.ones_like(std))
                module.weight.mul_(scale.view(-1, *[1] * (module.weight.dim() - 1)))
                module.bias.sub_(mean).mul_(scale)
            x = module(x)

    def forward(self, obs: Tensor | np.ndarray) -> Tensor | np.ndarray:
        first = self.torso[0]
        lead = (obs.shape if isinstance(obs, Tensor) else np.shape(obs))[:-3]
        x = self.pixels(obs)
        # Flipout convolutions take (members, *batch, C, H, W) in a population, nn.Conv2d (batch, C, H, W) outside one
        population = first.noise is not None and len(lead) > 0
        rows = x.reshape(lead[0], -1, *x.shape[-3:]) if population else x.reshape(-1, *x.shape[-3:])
        z = self.fc(self.torso(rows).flatten(-3))
        return self.as_given(self.action(z.reshape(*lead, z.shape[-1])), obs)
