"""What every batched torch env here shares: gymnasium's ``VectorEnv`` API around pure dynamics.

An env module supplies the physics as pure functions of batched tensors (``dynamics``, reward,
termination, observation) and the initial-state range; :class:`TorchVectorEnv` adds the rest once:
device and dtype, seeding, action checks, the time limit, NEXT_STEP autoreset and ``reset_mask``.
An env whose state lives elsewhere (MuJoCo Warp's arrays, ``envs/warp/``) replaces the three methods
that move the state (``_advance``, ``_replace_rows``, ``_observation``) and keeps the rest.
:class:`SingleEnv` shows one copy as a numpy ``gymnasium.Env``, for ``gymnasium.make`` and
``gymnasium.utils.env_checker.check_env``.
"""

from __future__ import annotations

import operator
import os
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from torch import Tensor

from envs import seeding

DTYPE_NAMES = {"float32": torch.float32, "float64": torch.float64}  # a dtype by name, as a JSON option gives it


def real_option(name: str, value: Any) -> float:
    """``value`` of the env's physical option ``name`` as a float; a ValueError naming it where it is no real number
    (a string or bool from ``--env-kwargs`` would otherwise fail only in ``step()``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def whole_number(value: Any) -> int | None:
    """``value`` as an ``int`` where it is of an integer type (numpy's too), else ``None``: not a bool, float or string,
    which ``int()`` would silently truncate or parse."""
    if isinstance(value, bool | np.bool_):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


Device = str | torch.device


def _described(x: Any) -> str:
    """A value a hook returned, as an error names it: a tensor's shape, dtype and device, else its type."""
    if not isinstance(x, Tensor):
        return f"a {type(x).__name__}"
    return f"a tensor of shape {tuple(x.shape)}, dtype {str(x.dtype).removeprefix('torch.')}, on {x.device}"


def check_num_threads(num_threads: Any, device: torch.device) -> int | None:
    """``num_threads`` as an int (a NumPy integer, from a sweep's ``np.arange``, too), or None; raise a ValueError naming
    the fix unless it is None or a positive integer, at most the core count where ``device`` is the CPU: the only device
    whose steps set it (torch takes any count; 100,000 crashed a step's first op)."""
    if num_threads is None:
        return None
    try:  # operator.index: ints and NumPy's integers, not 2.0 or "2"; bools are ints to it, so refused by name
        count = None if isinstance(num_threads, bool | np.bool_) else operator.index(num_threads)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise ValueError(f"num_threads must be a positive integer (or None), got {num_threads!r}")
    cores = os.cpu_count() or 1  # flipes.config.check_threads' bound, kept here: envs imports no flipes
    if device.type == "cpu" and count > cores:
        raise ValueError(f"num_threads {count} on a machine of {cores} cores: use {cores} or fewer (1: the default)")
    return count


class TorchVectorEnv(gym.vector.VectorEnv):
    r"""``num_envs`` copies of an env, stepped together by one batched torch function on ``device``.

    Autoreset follows gymnasium's ``AutoresetMode.NEXT_STEP``: an env whose episode ended is reset
    by the next ``step()``, which ignores its action and returns its first observation with reward
    0 and ``terminated = truncated = False``.

    Args:
        num_envs: N, copies of the env.
        max_episode_steps: an episode is truncated after this many steps (``None``: never).
        device: where the state lives and every returned tensor is.
        dtype: of the physical state (or its name, ``"float32"``). The default ``torch.float64`` is what gymnasium computes in,
            so steps match gymnasium's within 1e-5 whatever the state; ``torch.float32`` halves the
            memory traffic and agrees to about 1e-6 relative per step, but can flip a termination
            decided within that distance of its threshold.
        num_threads: torch CPU threads during ``step()`` (restored after it); ``None`` leaves torch's
            setting, as do the steps of an env on another device (CUDA), where a count past the cores is not
            refused (one below 1, or not an integer, is on any device). One by default: a step is some 40
            small ops, which threads barely speed up, and when the cores are busy with other processes (other MPI
            ranks, other jobs) every op that goes parallel (sin and cos do from 2048 elements) waits milliseconds
            for its threads.
        hide_velocities: observe without the velocity columns (``velocity_columns``), a partially
            observed env for policies with memory: CartPole's x and θ, Pendulum's cos θ and sin θ,
            Acrobot's four angle terms, MountainCarContinuous's position. The state and the rewards are
            unchanged.

    Attributes:
        state: ``(N, state_dim)`` physical state. Assigning it replaces every env's state (copied,
            cast to ``dtype``, moved to ``device``) and cancels pending autoresets; editing it in
            place (``env.state[i] = ...``) works too.
        elapsed: ``(N,)`` int64 steps taken in each current episode, settable the same way.

    Shape:
        - ``reset() -> obs``: ``(N, obs_dim)`` float32.
        - ``step(actions)``: actions ``(N,)`` integers (``Discrete``, from its ``start``), ``(N, *action_shape)``
          floats (``Box``; ``(N,)`` too when the action is one number) or integers (``MultiDiscrete``,
          ``MultiBinary``: an env of one's own); returns observations
          ``(N, obs_dim)`` float32, rewards ``(N,)`` float32, terminated and truncated ``(N,)`` bool.

    Examples::

        >>> env = gymnasium.make_vec("envs:flipes/CartPole-v1", num_envs=4096, device="cuda")
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(torch.randint(0, 2, (4096,), device="cuda"))
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    state_dim: int  # a class attribute, or set in __init__ before super().__init__ (a MuJoCo model's nq + nv)
    _dynamics_checked = False  # whether a step's dynamics returned states of the state's shape, dtype and device
    velocity_columns: ClassVar[tuple[int, ...]] = ()
    """The observation's columns that ``hide_velocities=True`` drops (an env without any refuses that option)."""
    initial_distribution: ClassVar[str] = "uniform"
    """``"normal"``: ``_initial_range`` gives each component's mean and standard deviation instead of its bounds, and
    the initial states are Gaussian (EvoJAX's ``CartPoleSwingUp`` draws so), seeded per env as the uniform ones."""

    def __init__(
        self,
        num_envs: int,
        max_episode_steps: int | None,
        device: Device,
        dtype: torch.dtype,
        single_observation_space: gym.spaces.Box,
        single_action_space: gym.spaces.Discrete | gym.spaces.Box | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary,
        num_threads: int | None = 1,
        hide_velocities: bool = False,
    ) -> None:
        count = whole_number(num_envs)
        if count is None or count < 1:
            raise ValueError(f"num_envs must be an integer of at least 1, got {num_envs!r}")
        num_envs = count
        if max_episode_steps is not None:  # 1.5 truncated after 2 steps, and a rollout read it as its step cap
            limit = whole_number(max_episode_steps)
            if limit is None or limit < 1:
                raise ValueError(f"max_episode_steps must be an integer of at least 1 (or None), got {max_episode_steps!r}")
            max_episode_steps = limit
        if isinstance(dtype, str):  # --env-kwargs '{"dtype": "float32"}': JSON has no torch.dtype
            dtype = DTYPE_NAMES.get(dtype.removeprefix("torch."), dtype)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f'dtype must be torch.float32 or torch.float64 ("float32" or "float64" in JSON), got {dtype!r}')
        device = torch.device(device)
        num_threads = check_num_threads(num_threads, device)
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.device = device
        self.dtype = dtype
        self.num_threads = num_threads if device.type == "cpu" else None  # another device's steps leave torch's setting
        self._kept = self._kept_columns(hide_velocities, single_observation_space)
        if self._kept is not None:
            space, columns = single_observation_space, self._kept.tolist()
            single_observation_space = gym.spaces.Box(space.low[columns], space.high[columns], dtype=space.dtype)
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, num_envs)
        self.action_space = batch_space(single_action_space, num_envs)
        self._discrete = isinstance(single_action_space, gym.spaces.Discrete)
        # an env of one's own may take these: their integers reach its dynamics as integers, not cast to dtype
        self._integers = isinstance(single_action_space, gym.spaces.MultiDiscrete | gym.spaces.MultiBinary)
        self._generator = torch.Generator(self.device)
        self._generator.seed()  # unseeded until reset(seed=...), like gymnasium's np_random
        self._state: Tensor | None = None
        self._elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._autoreset = torch.zeros(num_envs, dtype=torch.bool, device=self.device)  # ended last step
        self._set_initial_range(None)

    # -- what an env module supplies ---------------------------------------------------------

    def dynamics(self, state: Tensor, action: Tensor) -> Tensor:
        """``(N, state_dim), (N,) -> (N, state_dim)``: the env's pure transition function."""
        raise NotImplementedError

    def _reward_terminated(self, state: Tensor, action: Tensor, next_state: Tensor) -> tuple[Tensor, Tensor]:
        """Rewards ``(N,)`` float32 and terminations ``(N,)`` bool of the transitions."""
        raise NotImplementedError

    def _observe(self, state: Tensor) -> Tensor:
        """A new float32 ``(N, obs_dim)`` tensor (never a view of the state)."""
        raise NotImplementedError

    def _initial_range(self, options: dict[str, Any] | None) -> tuple[list[float], list[float]]:
        """Per-component bounds of the uniform initial state, given gymnasium's reset ``options``."""
        raise NotImplementedError

    def _set_initial_range(self, options: dict[str, Any] | None) -> None:
        low, high = self._initial_range(options)
        self._low = torch.tensor(low, dtype=self.dtype, device=self.device)
        high = torch.tensor(high, dtype=self.dtype, device=self.device)
        if self._low.shape != (self.state_dim,) or high.shape != (self.state_dim,):  # else a broadcast error at reset
            raise ValueError(
                f"{type(self).__name__}._initial_range returned bounds of shapes {tuple(self._low.shape)} and "
                f"{tuple(high.shape)} for state_dim {self.state_dim}; return two lists of {self.state_dim} numbers, one per "
                "state component"
            )
        if self.initial_distribution == "normal":  # mean and standard deviation
            self._width = high
        elif self.initial_distribution == "uniform":
            self._width = high - self._low
        else:  # a typo would otherwise draw uniform states silently
            given = self.initial_distribution
            raise ValueError(f'{type(self).__name__}.initial_distribution must be "uniform" or "normal", got {given!r}')

    def _sample(self, n: int, seeds: Tensor | None = None) -> Tensor:
        """``n`` initial states: from the env's generator, or from each env's own ``seeds``."""
        normal = self.initial_distribution == "normal"
        if seeds is None:
            draw = torch.randn if normal else torch.rand
            u = draw(n, self.state_dim, generator=self._generator, device=self.device, dtype=self.dtype)
        else:
            u = (seeding.normal if normal else seeding.uniform)(seeds, self.state_dim, dtype=self.dtype)
        return torch.addcmul(self._low, self._width, u)  # low + (high - low) u, or mean + std z

    # -- state ------------------------------------------------------------------------------

    @property
    def state(self) -> Tensor | None:
        return self._state

    @state.setter
    def state(self, value: Tensor | np.ndarray) -> None:
        self._set_state(self._checked_state(value))
        self._autoreset.zero_()

    def _set_state(self, value: Tensor) -> None:
        """Every env's state becomes its row of ``value`` (checked: ``(N, state_dim)`` on ``device``)."""
        # stored column-major: the dynamics reads whole state components, which are then contiguous
        self._state = torch.empty(self.state_dim, self.num_envs, device=self.device, dtype=self.dtype).copy_(value.T).T

    def _checked_state(self, value: Tensor | np.ndarray) -> Tensor:
        """``value`` on ``device`` in ``dtype``, if it holds one state per env."""
        value = torch.as_tensor(value, device=self.device, dtype=self.dtype)
        if value.shape != (self.num_envs, self.state_dim):
            raise ValueError(f"state must have shape ({self.num_envs}, {self.state_dim}), got {tuple(value.shape)}")
        return value

    @property
    def elapsed(self) -> Tensor:
        return self._elapsed

    @elapsed.setter
    def elapsed(self, value: Tensor | np.ndarray | int) -> None:
        value = torch.as_tensor(value, device=self.device, dtype=torch.int64)
        if value.shape not in ((), (self.num_envs,)):
            raise ValueError(f"elapsed must be one int or have shape ({self.num_envs},), got shape {tuple(value.shape)}")
        self._elapsed = value.expand(self.num_envs).clone()

    # -- gymnasium API ----------------------------------------------------------------------

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Reset every env, or only those of ``options["reset_mask"]`` (a bool ``(N,)`` tensor or array).

        ``seed``, as in gymnasium's vector envs: env ``i`` starts from a state drawn with seed
        ``seed[i]`` (a list) or ``seed + i`` (an int), which depends on that seed alone (not on N or
        the device: see :mod:`envs.seeding`); later autoresets draw from the env's
        ``torch.Generator``, seeded from all the seeds. Without a seed, every draw comes from that
        generator. Other ``options`` are gymnasium's own for the env (e.g. ``low``/``high`` bounds
        of the initial state) and stay in force for later autoresets, as in gymnasium's
        ``CartPoleVectorEnv``.
        """
        seeds = self._seeds(seed)
        # a numpy integer seeds np_random as the int it is (gymnasium's seeding takes Python ints only)
        super().reset(seed=int(seed) if isinstance(seed, int | np.integer) else None)
        if seeds is not None:  # on the host: reading a sum off a GPU would wait for it at every reset
            self._generator.manual_seed(int(seeding.mix64(seeds).sum()) % 2**63)
            seeds = seeds.to(self.device)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        self._set_initial_range(options)
        if mask is None:
            self.state = self._sample(self.num_envs, seeds)  # also clears pending autoresets
            self._elapsed.zero_()
        else:
            mask = self._check_mask(mask)
            if self._state is None:
                raise RuntimeError("reset with a reset_mask needs a full reset() first: the other envs have no state yet")
            self._restart(mask, seeds=seeds)
            self._autoreset &= ~mask
        return self._observation(), {}

    def step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        if self.num_threads is None:
            return self._step(actions)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)  # costs ~0.1 µs; per calling thread with OpenMP
        try:
            return self._step(actions)
        finally:
            torch.set_num_threads(threads)

    def _step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() (or set .state) before step()")
        action = self._check_actions(actions)
        if action.requires_grad:  # a policy called outside no_grad: its graph would chain every step's state to the last
            action = action.detach()
        reward, terminated = self._advance(action)
        # a float or int done (EvoJAX's, JAX's habit) would fail below as torch's "bitwise_or not implemented"
        if terminated.dtype != torch.bool or terminated.shape != self._elapsed.shape or reward.shape != self._elapsed.shape:
            raise ValueError(self._transition_problem(reward, terminated))
        self._elapsed += 1
        # NEXT_STEP: envs that ended last step start over now instead: fresh state, reward 0, not
        # terminated, elapsed 0 (so not truncated below either)
        self._restart(self._autoreset, reward, terminated)
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = self._elapsed >= self.max_episode_steps
        self._autoreset = terminated | truncated
        return self._observation(), reward, terminated, truncated, {}

    def _transition_problem(self, reward: Tensor, terminated: Tensor) -> str:
        """The one-line error for rewards or terminations of ``_reward_terminated`` (or ``_advance``) that are not
        ``(N,)`` rewards and ``(N,)`` bools."""
        n, name = self.num_envs, type(self).__name__
        if reward.shape != (n,):
            shape = tuple(reward.shape)
            return f"{name}._reward_terminated returned rewards of shape {shape} for {n} envs; return one per env, shape ({n},)"
        dtype = str(terminated.dtype).removeprefix("torch.")
        return (
            f"{name}._reward_terminated returned terminations of dtype {dtype} and shape {tuple(terminated.shape)} for {n} envs; "
            f"return one bool per env, shape ({n},) (e.g. done > 0.5, or done.bool())"
        )

    # -- how the state moves: the pure functions above by default; envs whose state lives
    # elsewhere (MuJoCo Warp's arrays, envs/warp/) replace these three -----------------------

    def _advance(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """Steps every env: the next state replaces the current one; returns the transitions' rewards
        ``(N,)`` float32 and terminations ``(N,)`` bool."""
        state = self._state
        self._state = self.dynamics(state, action)
        if not self._dynamics_checked and (  # else torch's error at a later autoreset, far from the cause
            not isinstance(self._state, Tensor)
            or self._state.shape != state.shape
            or self._state.dtype != state.dtype
            or self._state.device != state.device
        ):
            got, self._state = _described(self._state), state
            n, d, dtype = self.num_envs, self.state_dim, str(self.dtype).removeprefix("torch.")
            raise ValueError(
                f"{type(self).__name__}.dynamics returned {got} for {n} envs; return their next states, shape ({n}, {d}), "
                f"dtype {dtype}, on {state.device} (the state's)"
            )
        self._dynamics_checked = True  # once: a step is ~40 small ops, and these reads would be one more on each
        return self._reward_terminated(state, action, self._state)

    def _replace_rows(self, rows: Tensor, fresh: Tensor) -> None:
        """The envs ``rows`` start over from ``fresh`` states: ``rows`` holds indices and ``fresh`` one
        state per index, or ``rows`` is a bool ``(N,)`` mask and ``fresh`` holds a state for every env."""
        if rows.dtype == torch.bool:
            self._state = torch.where(rows[:, None], fresh, self._state)
        else:
            self._state.index_copy_(0, rows, fresh)

    def _observation(self) -> Tensor:
        """The observations of the current states, ``(N, obs_dim)`` float32 (the kept columns with ``hide_velocities``)."""
        obs = self._observe(self._state)
        return obs if self._kept is None else obs.index_select(-1, self._kept)

    # -- helpers ----------------------------------------------------------------------------

    def _kept_columns(self, hide_velocities: bool, space: gym.spaces.Box) -> Tensor | None:
        """The observation columns kept with ``hide_velocities`` (on ``device``), ``None`` for all of them."""
        if not isinstance(hide_velocities, bool):  # "false" from a config would otherwise be truthy
            raise ValueError(f"hide_velocities must be true or false, got {hide_velocities!r}")
        if not hide_velocities:
            return None
        if not self.velocity_columns:
            raise ValueError(f"{type(self).__name__} observes no velocities; hide_velocities=True hides nothing here")
        kept = [i for i in range(space.shape[0]) if i not in self.velocity_columns]
        return torch.tensor(kept, dtype=torch.int64, device=self.device)

    def _restart(self, mask: Tensor, *zeroed: Tensor, seeds: Tensor | None = None) -> None:
        """The envs of ``mask`` start over from states drawn afresh (with their ``seeds``, if given),
        with elapsed 0 and their entries of each ``zeroed`` tensor set to 0 / False."""
        if self.device.type == "cpu":  # reading the mask costs no sync here, and drawing few rows is cheap
            rows = mask.nonzero().squeeze(1)
            if rows.numel():
                self._replace_rows(rows, self._sample(rows.numel(), None if seeds is None else seeds[rows]))
                for t in (self._elapsed, *zeroed):
                    t.index_fill_(0, rows, 0)
            return
        # on an accelerator: draw every row and select, so that a step never waits for the device
        for t in (self._elapsed, *zeroed):
            t.masked_fill_(mask, 0)
        self._replace_rows(mask, self._sample(self.num_envs, seeds))

    def _seeds(self, seed: int | list[int] | np.ndarray | Tensor | None) -> Tensor | None:
        """Each env's seed as an ``(N,)`` int64 tensor on the host, by gymnasium's convention."""
        if seed is None:
            return None
        if isinstance(seed, int | np.integer):
            return int(seed) + torch.arange(self.num_envs, dtype=torch.int64, device="cpu")
        seeds = torch.as_tensor(seed, device="cpu")
        if seeds.shape != (self.num_envs,) or seeds.dtype.is_floating_point or seeds.dtype == torch.bool:
            raise ValueError(
                f"seed must be an int, None or {self.num_envs} ints (one per env), got {type(seed).__name__} "
                f"of shape {tuple(seeds.shape)} and dtype {seeds.dtype}"
            )
        return seeds.to(torch.int64)

    def _check_mask(self, mask: Tensor | np.ndarray) -> Tensor:
        mask = torch.as_tensor(mask, device=self.device)
        if mask.dtype != torch.bool or mask.shape != (self.num_envs,):
            raise ValueError(
                f"options['reset_mask'] must be a bool tensor or array of shape ({self.num_envs},), "
                f"got dtype {mask.dtype} and shape {tuple(mask.shape)}"
            )
        if not mask.any():
            raise ValueError("options['reset_mask'] resets no env; it needs at least one True")
        return mask

    def _expected(self) -> str:
        """What a Discrete env's ``step`` takes, for its errors."""
        space = self.single_action_space
        return f"a tensor of shape ({self.num_envs},) of integers in [{space.start}, {space.start + space.n})"

    def _check_actions(self, actions: Tensor | np.ndarray) -> Tensor:
        """Validated actions on ``device``: ``(N,)`` integers (Discrete), ``(N,)`` ``dtype`` (one-number Box)
        or ``(N, *action_shape)`` ``dtype`` (other Box), integers as given (MultiDiscrete, MultiBinary). Discrete
        actions already on an accelerator are not range-checked: reading them would make every step wait for the
        device."""
        # a tensor stays on its device (an accelerator's actions are not read back); arrays are read on the host
        a = actions if isinstance(actions, Tensor) else torch.as_tensor(actions, device="cpu")
        n, space, name = self.num_envs, self.single_action_space, type(self).__name__
        if self._discrete:  # the messages are made where one is raised: this runs at every step
            if a.shape != (n,):
                raise ValueError(f"{name}.step takes one action per env, {self._expected()}; got shape {tuple(a.shape)}")
            if a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
                raise ValueError(f"{name}.step takes integer actions, {self._expected()}; got dtype {a.dtype}")
            if a.device.type == "cpu":
                lo, hi = a.aminmax()
                lo, hi = int(lo), int(hi)
                first = int(space.start)  # Discrete(n, start=k) takes k ... k + n - 1
                if lo < first or hi >= first + space.n:
                    raise ValueError(f"{name}.step takes {self._expected()}; got actions from {lo} to {hi}")
            return a if a.device == self.device else a.to(self.device)  # no op for the no-op, at every step
        shape = (n, *space.shape)
        if a.shape != shape and not (space.shape == (1,) and a.shape == (n,)):
            alt = f" or ({n},)" if space.shape == (1,) else ""
            raise ValueError(f"{name}.step takes one action per env, a tensor of shape {shape}{alt}; got shape {tuple(a.shape)}")
        if self._integers and (a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool):
            raise ValueError(f"{name}.step takes integer actions of shape {shape} ({space}); got dtype {a.dtype}")
        if a.dtype.is_complex or a.dtype == torch.bool:
            raise ValueError(f"{name}.step takes real-valued actions of shape {shape}; got dtype {a.dtype}")
        a = a.reshape(n) if space.shape == (1,) else a  # one-number actions as (N,)
        if self._integers:
            return a if a.device == self.device else a.to(self.device)
        return a if a.dtype == self.dtype and a.device == self.device else a.to(self.device, self.dtype)


class SingleEnv(gym.Env[np.ndarray, Any]):
    """One copy of a :class:`TorchVectorEnv` as a plain ``gymnasium.Env``: numpy in and out.

    It is what ``gymnasium.make("flipes/...")`` builds (``TimeLimit`` then adds the time limit), for
    tools that want a single env; batched work should use the vector env. It never autoresets:
    stepping past the end of an episode continues the physics (undefined behaviour in gymnasium).

    Args:
        render_mode: must be ``None`` (these envs do not render).
        device, dtype: as for the vector env.
        **kwargs: the env's own options (e.g. ``g`` for Pendulum).
    """

    vector_env: ClassVar[type[TorchVectorEnv]]
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self, render_mode: str | None = None, device: Device = "cpu", dtype: torch.dtype = torch.float64, **kwargs: Any
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"{type(self).__name__} does not render; render_mode must be None, got {render_mode!r}")
        self.vector = self.vector_env(num_envs=1, max_episode_steps=None, device=device, dtype=dtype, **kwargs)
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space

    @property
    def state(self) -> np.ndarray | None:
        """The physical state ``(state_dim,)`` (a copy); assign to set it."""
        return None if self.vector.state is None else self.vector.state[0].cpu().numpy().copy()

    @state.setter
    def state(self, value: np.ndarray) -> None:
        self.vector.state = torch.as_tensor(np.asarray(value), device="cpu")[None]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs, info = self.vector.reset(seed=seed, options=options)
        return obs[0].cpu().numpy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, _, info = self.vector.step(torch.as_tensor(np.asarray(action), device="cpu")[None])
        self.vector._autoreset.zero_()  # a single env continues past the end instead
        return obs[0].cpu().numpy(), float(reward[0]), bool(terminated[0]), False, info
