"""EnvPool's C++ thread pool as a gymnasium ``VectorEnv`` with torch tensors in and out.

EnvPool (Weng et al., "EnvPool: A Highly Parallel Reinforcement Learning Environment Execution
Engine", NeurIPS 2022, arXiv:2206.10558) steps a batch of envs on its own C++ threads, with no
Python per env. Two of its properties shape this adapter:

- Seeds are fixed when the pool is created (``reset(seed=...)`` cannot reseed it), and creating
  a pool costs about 2 ms per MuJoCo env, 0.05 to 0.25 s per Atari env (README, Env engines). Each
  env therefore owns one random stream, seeded once;
  :meth:`EnvPoolVectorEnv.reset_streams` puts env ``i`` at episode ``e`` of the stream seeded
  ``seeds[i]`` (recreating the pool only when the seeds change or an episode must be repeated,
  and fast-forwarding otherwise: one reset per skipped episode).
- Finished envs are never stepped again until they are reset (gymnasium's ``DISABLED`` autoreset
  mode): their rows keep the last observation, a zero reward and their end flags. So every env
  draws exactly one reset per episode whatever the other envs do, which keeps a member's episodes
  independent of how the population is split across processes, and no thread time is spent on
  episodes nobody counts.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import operator
import os
import sys
import warnings
from collections.abc import Callable, Hashable, Sequence
from types import ModuleType
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor

from flipes.rl.spaces import flat_observation_space, flatten_observations

SEED_MODULUS = 2**31  # EnvPool takes int32 seeds; flipes' seeds are reduced modulo 2**31


# what EnvPool's import sets where unset (its Jumanji viewers: a non-interactive backend, a config directory in /tmp)
_MATPLOTLIB_ENVIRON = ("MPLBACKEND", "MPLCONFIGDIR")


def import_envpool() -> ModuleType:
    """``import envpool``, the caller's matplotlib left as it was: EnvPool's import sets ``MPLBACKEND=Agg`` and
    ``MPLCONFIGDIR=/tmp/envpool-jumanji-matplotlib`` where unset and imports matplotlib under them, so a later
    ``plt.show()`` drew nothing (a script, IPython) and a notebook's matplotlib ignored the user's matplotlibrc.
    matplotlib (which EnvPool imports anyway) is imported first, reading the caller's environment, which is put back
    after. Raises ImportError where EnvPool is not installed."""
    if "envpool" in sys.modules:
        return sys.modules["envpool"]
    before = {key: os.environ.get(key) for key in _MATPLOTLIB_ENVIRON}
    with contextlib.suppress(ImportError):
        import matplotlib  # noqa: F401
    try:
        import envpool
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return envpool


def envpool_ids() -> frozenset[str]:
    """The ids EnvPool provides (empty when it is not installed)."""
    try:
        envpool = import_envpool()
    except ImportError:
        return frozenset()
    return frozenset(envpool.list_all_envs())


@functools.cache
def default_spec(env_id: str) -> Any:
    """EnvPool's spec of ``env_id`` with its default options, read once per id: an Atari id's takes ~0.2 s of CPU to make
    (its ROM is checked), and each env made read it three times (the options' kinds and names). Read, never changed."""
    import_envpool()
    from envpool.registration import registry

    return registry.make_spec(env_id)


def envpool_atari(name: str) -> bool:
    """Whether ``name`` is one of EnvPool's Atari ids (``Pong-v5``; False without EnvPool)."""
    if not name.endswith("-v5") or "/" in name or ":" in name:  # all of them are Name-v5: no import of EnvPool (0.5 s)
        return False
    try:
        import_envpool()
        from envpool.registration import registry
    except ImportError:
        return False
    spec = getattr(registry, "specs", {}).get(name)  # (import path, spec class, options) in EnvPool 0.8 - 1.2
    return isinstance(spec, tuple) and bool(spec) and spec[0] == "envpool.atari"


def _gymnasium_dtypes(space: gym.Space) -> gym.Space:
    """EnvPool declares MuJoCo actions as float64 where gymnasium declares float32: use gymnasium's."""
    if isinstance(space, gym.spaces.Box) and space.dtype == np.float64:
        return gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)
    return space


MAX_PARKED = 64  # pools kept for other seed sets (parts of a population), each with its own threads
# tasks whose steps draw from their env's random stream, so that resets alone (a resumed run's fast-forward) do not
# replay their episodes, and what draws (measured: their resumed runs logged other timesteps; Taxi, CliffWalking,
# Catch, classic control, BipedalWalker and MuJoCo, whose randomness is all at reset, resume bit for bit)
STEP_DRAWS = {
    "FrozenLake": "its slippery ice",
    "FrozenLake8x8": "its slippery ice",  # EnvPool's FrozenLake has no is_slippery option: every map slips
    "LunarLander": "its engines' dispersion",
    "LunarLanderContinuous": "its engines' dispersion",
    "Blackjack": "its cards",
    "NChain": "its slips",
}


# EnvPool's Atari options that its C++ takes unchecked, and the least value each works at: below it noop_max and
# stack_num segfault at the first reset, img_height and img_width abort in OpenCV, and frame_skip advances no frame
# (no episode ends); what each least value means, for the error
ATARI_LEAST = {
    "noop_max": "noop_max=1 starts every episode without random no-ops",
    "stack_num": "stack_num=1 observes one frame",
    "frame_skip": "frame_skip=1 repeats no action",
    "img_height": "img_height=84 is the Nature DQN's",
    "img_width": "img_width=84 is the Nature DQN's",
}


def check_atari_options(env_id: str, kwargs: dict[str, Any]) -> None:
    """A ValueError naming the fix where an option of EnvPool's Atari ``env_id`` would crash the process, freeze the game
    (:data:`ATARI_LEAST`) or is a ``repeat_action_probability`` outside [0, 1], which EnvPool takes silently."""
    if not envpool_atari(env_id):
        return
    for key, fix in ATARI_LEAST.items():
        value = kwargs.get(key)
        if isinstance(value, int | float | np.number) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"EnvPool's {env_id} takes {key} of at least 1, got {key}={value!r} (it crashes or stalls); {fix}")
    p = kwargs.get("repeat_action_probability")
    if isinstance(p, int | float | np.number) and not isinstance(p, bool) and not 0 <= p <= 1:
        raise ValueError(
            f"EnvPool's {env_id} takes repeat_action_probability in [0, 1], got {p!r}; 0 (EnvPool's default) never repeats "
            "the last action, 0.25 is the ALE's sticky actions (Machado et al. 2018)"
        )


def check_option_types(env_id: str, kwargs: dict[str, Any]) -> None:
    """A TypeError naming the option, the kind of value it takes and its default, where an option of EnvPool's ``env_id``
    is of a kind its default's is not (``"0.25"`` for a float, 2.5 for an int, null): EnvPool's own refusal is pybind's
    list of its constructor's argument types, without the option's name."""
    try:
        defaults = default_spec(env_id).config._asdict()
    except Exception:  # another EnvPool version's internals: its own error then
        return
    kinds: tuple[tuple[type, Callable[[Any], bool], str], ...] = (
        (bool, _is_integer, "true or false"),  # pybind takes 1 and 0 (and numpy's, a 0-d tensor's) for a bool
        (int, _is_integer, "an integer"),  # a bool is an int, as EnvPool takes it
        (float, _is_real, "a number"),
        (str, lambda v: isinstance(v, str), "a string"),
    )
    for key, value in kwargs.items():
        default = defaults.get(key)
        kind = next(((takes, what) for cls, takes, what in kinds if type(default) is cls), None)
        if kind is not None and not kind[0](value):
            raise TypeError(
                f"EnvPool's {env_id} takes {key} as {kind[1]}, got {value!r} (of type {type(value).__name__}); e.g. its "
                f"default, {key}={default!r}"
            )


def _is_integer(value: Any) -> bool:
    """An int where Python's ``operator.index`` reads one (numpy's integers, a 0-d integer tensor), as pybind does."""
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_real(value: Any) -> bool:
    """A real number: an int or float of Python's, numpy's or a 0-d tensor's (not a string, which float() parses)."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real)


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of an EnvPool task, stepped on ``threads`` C++ threads.

    Args:
        env_id: an id of ``envpool.list_all_envs()``, e.g. ``"HalfCheetah-v5"``.
        num_envs: copies.
        threads: EnvPool worker threads (0: EnvPool's default, one per core).
        device: where the returned tensors live.
        seeds: the seed of each env's stream (``len == num_envs``); the default is ``0, 1, 2, ...``
            (gymnasium's ``seed + i`` convention with seed 0).
        **kwargs: passed to ``envpool.make`` (e.g. ``frame_skip``).

    Observations, rewards and flags come back as torch tensors (``torch.from_numpy`` of fresh
    arrays on the CPU, so earlier results are never overwritten); actions may be tensors or arrays.
    Dict observations (dm_control's tasks) come back flattened into one Box (:mod:`flipes.rl.spaces`;
    ``source_observation_space`` keeps EnvPool's).
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        threads: int = 0,
        device: str | torch.device = "cpu",
        seeds: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        envpool = import_envpool()

        if env_id not in envpool.list_all_envs():
            raise ValueError(f"EnvPool has no env {env_id!r} (envpool.list_all_envs() lists its ids)")
        check_option_types(env_id, kwargs)
        check_atari_options(env_id, kwargs)
        # more threads than envs is no faster, and EnvPool aborts the process at very many
        threads = min(int(threads), int(num_envs)) if threads else 0
        self.env_id, self.num_envs, self.threads, self.device = env_id, int(num_envs), threads, torch.device(device)
        self._make_kwargs = kwargs
        self._pool: Any = None
        self._seeds: tuple[int, ...] = ()
        self._tag: Hashable = None  # reset_streams' tag of the pool's seed set
        self._episode = -1  # episode of the streams the envs are in (-1: not reset since the pool was made)
        self._parked: dict[tuple[tuple[int, ...], Hashable], tuple[Any, int]] = {}  # other seed sets' pools (parts)
        self._warned_evict = False
        with warnings.catch_warnings():  # its spaces are built float64 and cast: gymnasium warns on every make
            warnings.simplefilter("ignore", UserWarning)
            probe = envpool.make(env_id, env_type="gymnasium", num_envs=1, **kwargs)  # the spaces; the pool comes at reset
            self.source_observation_space = probe.observation_space
            self.single_observation_space = flat_observation_space(probe.observation_space) or probe.observation_space
            self.single_action_space = _gymnasium_dtypes(probe.action_space)
            probe.close()
        if seeds is not None:
            self._make_pool(seeds)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.spec = None
        self._done = np.ones(self.num_envs, dtype=bool)
        self._obs: np.ndarray | None = None
        self._terminated = np.zeros(self.num_envs, dtype=bool)
        self._truncated = np.zeros(self.num_envs, dtype=bool)

    def _make_pool(self, seeds: Sequence[int], tag: Hashable = None) -> None:
        envpool = import_envpool()

        seeds = tuple(int(s) % SEED_MODULUS for s in seeds)
        if len(seeds) != self.num_envs:
            raise ValueError(
                f"got {len(seeds)} seeds for {self.num_envs} envs; pass one seed per env ({self.num_envs} ints), "
                "or to reset(seed=s) one int s, which seeds env i with s + i"
            )
        if self._pool is not None:
            self._pool.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._pool = envpool.make(
                self.env_id,
                env_type="gymnasium",
                num_envs=self.num_envs,
                batch_size=self.num_envs,
                num_threads=self.threads,
                seed=list(seeds),
                **self._make_kwargs,
            )
            _ = self._pool.observation_space, self._pool.action_space  # built (and cached) here, quietly
        self._seeds, self._tag, self._episode = seeds, tag, -1

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Reset every env (or those of ``options["reset_mask"]``).

        ``seed`` follows gymnasium: env ``i`` is seeded ``seed + i`` (or ``seed[i]``) and its episode
        is a pure function of that seed; it recreates the pool (about 2 ms per MuJoCo env, 0.05 s or
        more per Atari one). Without a seed each env continues its own stream.
        """
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int | np.integer) else list(seed)
            if (
                self._pool is None
                or self._episode >= 0
                or self._tag is not None
                or tuple(int(s) % SEED_MODULUS for s in seeds) != self._seeds
            ):
                self._make_pool(seeds)
        elif self._pool is None:
            self._make_pool(range(self.num_envs))
        mask = None if options is None else options.get("reset_mask")
        if mask is not None:
            ids = np.flatnonzero(np.asarray(mask if not isinstance(mask, Tensor) else mask.cpu().numpy(), dtype=bool))
            obs, info = self._pool.reset(env_id=ids.astype(np.int32))
            obs = self._flat(obs)
            full = self._obs.copy() if self._obs is not None else np.zeros((self.num_envs, *obs.shape[1:]), obs.dtype)
            full[info["env_id"]] = obs
            self._done[ids] = False
            self._terminated[ids] = self._truncated[ids] = False
        else:
            obs, info = self._pool.reset()
            obs = self._flat(obs)
            full = np.empty_like(obs)
            full[info["env_id"]] = obs  # in env order, whichever thread finished first
            self._episode += 1
            self._done[:] = False
            self._terminated[:] = self._truncated[:] = False
        self._obs = full
        return self._tensor(full.copy()), {}

    def step_draws(self) -> str | None:
        """What draws random numbers in this task's steps (:data:`STEP_DRAWS`, or Atari's sticky actions), so that
        :meth:`reset_streams` fast-forwarding a fresh pool does not replay its episodes; None where none does."""
        if self._make_kwargs.get("repeat_action_probability", 0) > 0:
            return "its sticky actions"
        return STEP_DRAWS.get(self.env_id.rpartition("/")[2].partition("-v")[0])

    def reset_streams(self, seeds: Sequence[int], episode: int, tag: Hashable = None) -> tuple[Tensor, dict[str, Any]]:
        """Reset env ``i`` to episode ``episode`` (counted from 0) of the stream seeded ``seeds[i]``.

        Consecutive episodes cost one reset; skipped ones one reset each (fast-forward, e.g. after
        resuming a run); going back, or new seeds, recreate the pool first. Seed sets used in turn (a
        population rolled out in parts, ``pop.split``) each keep a pool of their own, parked while the
        others run, so every one of them advances one reset per generation; rebuilt and fast-forwarded
        from episode 0, the parts would cost more resets every generation (as they do past
        ``MAX_PARKED`` + 1 seed sets: a warning says so, once). ``tag`` tells apart users of the same seeds that
        each need their own pool (parts of a population playing common episodes, each the same ones).
        """
        seeds = tuple(int(s) % SEED_MODULUS for s in seeds)
        key = (seeds, tag)
        if self._pool is not None and key != (self._seeds, self._tag):  # another seed set: park this one's pool
            self._parked[(self._seeds, self._tag)] = (self._pool, self._episode)
            self._pool = None
            if key in self._parked:
                self._pool, self._episode = self._parked.pop(key)
                self._seeds, self._tag = key
            while len(self._parked) > MAX_PARKED:  # the longest parked go (seeds that keep changing would pile up)
                self._parked.pop(next(iter(self._parked)))[0].close()
                if not self._warned_evict:
                    self._warned_evict = True
                    warnings.warn(
                        f"EnvPool: more than {MAX_PARKED + 1} seed sets in turn (parts of a population): their pools "
                        "are rebuilt and fast-forwarded every generation, at a cost that grows with the generation; "
                        "use fewer parts (a larger --members-per-pass)",
                        stacklevel=2,
                    )
        if self._pool is None or key != (self._seeds, self._tag) or episode <= self._episode:
            self._make_pool(seeds, tag)
        while self._episode < episode - 1:
            self._pool.reset()
            self._episode += 1
        return self.reset()

    def step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Step the unfinished envs; finished ones keep their last observation and flags, reward 0."""
        if self._obs is None or self._pool is None:
            raise RuntimeError("call reset() before step()")
        reward = np.zeros(self.num_envs, dtype=np.float64)
        live = np.flatnonzero(~self._done)
        if len(live):
            self.send(actions, live)
            ids, _, r, _, _ = self.recv()
            reward[ids] = r
        return (
            self._tensor(self._obs.copy()),
            self._tensor(reward),
            self._tensor(self._terminated.copy()),
            self._tensor(self._truncated.copy()),
            {},
        )

    @property
    def done(self) -> np.ndarray:
        """Which envs have finished their episode (a copy)."""
        return self._done.copy()

    def send(self, actions: Tensor | np.ndarray, ids: np.ndarray) -> None:
        """Start stepping the envs ``ids`` (unfinished ones) with ``actions[ids]`` (``actions``
        holds a row for every env) and return at once; :meth:`recv` collects them. One batch may
        be in flight at a time, so the caller can compute the other envs' actions meanwhile."""
        a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        if a.shape[0] != self.num_envs:
            raise ValueError(f"expected actions for {self.num_envs} envs, got shape {tuple(a.shape)}")
        if self._done[ids].any():
            raise ValueError("send() got finished envs; reset them first")
        every = len(ids) == self.num_envs
        self._pool.send(a if every else a[ids], None if every else ids.astype(np.int32))

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Wait for the batch of :meth:`send`: ``(ids, obs, reward, terminated, truncated)`` of its
        envs, as numpy arrays in EnvPool's order (``ids`` says which env each row is)."""
        if self._obs is None:
            raise RuntimeError("call reset() before recv()")
        o, r, term, trunc, info = self._pool.recv(reset=False, return_info=True)
        o = self._flat(o)
        ids = info["env_id"]  # EnvPool's threads may return the envs in any order
        self._obs[ids] = o
        self._terminated[ids], self._truncated[ids] = term, trunc
        self._done[ids] = term | trunc
        return ids, o, r, term, trunc

    def _flat(self, obs: Any) -> np.ndarray:
        """Dict observations (dm_control's) as one array, as :attr:`single_observation_space` says."""
        return flatten_observations(self.source_observation_space, obs) if isinstance(obs, dict | tuple) else obs

    def _tensor(self, x: np.ndarray) -> Tensor:
        t = torch.from_numpy(x)  # no copy on the CPU
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def close(self, **kwargs: Any) -> None:
        for pool, _ in self._parked.values():
            pool.close()
        self._parked.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __repr__(self) -> str:
        return f"EnvPoolVectorEnv({self.env_id!r}, num_envs={self.num_envs}, threads={self.threads})"
