"""Making vector environments with torch tensors in and out, on the fastest engine at hand.

An env id picks its engine ("backend") by an optional prefix:

============================  ===============================================================
``flipes/CartPole-v1``        flipes' batched torch envs (``envs/``), stepped on the device
``envpool:HalfCheetah-v5``    EnvPool's C++ thread pool (``pip install 'flipes[envpool]'``)
``gymnasium:HalfCheetah-v5``  gymnasium's own envs: in worker processes (``AsyncVectorEnv``)
                              for MuJoCo and Box2D ids, in this process (``SyncVectorEnv``)
                              otherwise
``gymnasium-sync:ID``         gymnasium's ``SyncVectorEnv``, whatever the id
``gymnasium-async:ID``        gymnasium's ``AsyncVectorEnv`` with a block of envs per worker
``HalfCheetah-v5``            EnvPool when it is installed and has the id, else ``gymnasium:``
============================  ===============================================================

(The prefixes cannot clash with gymnasium's own ``module:Env-v0`` syntax: ``envpool`` and
``gymnasium`` would import those very packages, and the other two are not module names.)
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from flipes.checkpoint import clip
from flipes.cli import import_here, main_module
from flipes.errors import UsageError
from flipes.progress import to_stderr
from flipes.rl.envpool_vec import (
    EnvPoolVectorEnv,
    check_atari_options,
    check_option_types,
    default_spec,
    envpool_ids,
)
from flipes.rl.mujoco_log import mujoco_warnings_once, uses_mujoco
from flipes.rl.spaces import (  # holds_tensors: imported from here before it moved
    STRUCTURED,
    SpaceError,
    flat_observation_space,
    flatten_observations,
    holds_tensors,
    layout,
)
from flipes.rl.workers import WorkerVectorEnv

BACKENDS = ("envpool", "gymnasium", "gymnasium-sync", "gymnasium-async")


class EnvError(ValueError):
    """An env id that no engine here can make: unknown, or its packages are not installed. The
    message says what to install or which id to use."""


def flipes_envs() -> None:
    """Import flipes' ``envs`` package, which registers the ``flipes/`` ids with gymnasium. A module of the user's named
    ``envs`` (a folder or ``envs.py`` in the working directory or the script's folder) found first hides it: refused,
    naming its file, rather than every ``flipes/`` id reported unknown in a list of none."""
    import envs

    if getattr(envs, "register_envs", None) is None:
        where = getattr(envs, "__file__", None) or ", ".join(getattr(envs, "__path__", [])) or "?"
        raise EnvError(
            f"the module 'envs' Python imported ({where}) is not flipes' envs package, which registers the flipes/ ids: "
            "a module of that name in the working directory or the script's folder hides it; rename that one, or run "
            "from another directory"
        )


class EnvOptionError(EnvError):
    """A constructor option of an env (``make_vector_env``'s ``**kwargs``, ``--env-kwargs``) that the env does not
    take, that flipes sets itself, or whose value the env refused; the message names the env, its engine and the
    option, and the options it takes where they are known. ``option``: the option it does not take, where that is
    the refusal."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


# constructor options that a run sets itself, and what sets them: --env-kwargs may not give them (config.validate)
OWN_OPTIONS = MappingProxyType(
    {
        "num_envs": "the copies: --popsize x --episodes, --eval-episodes",
        "seed": "every episode's seed comes from --seed",
        "device": "where flipes/ envs run: --device",
        "render_mode": "flipes evaluate --render sets it",
        "max_episode_steps": "--max-episode-steps cuts every episode of the run",
        "vectorization_mode": "gymnasium.make_vec's own: the --env prefix picks it (gymnasium-sync:, gymnasium-async:)",
        "vector_kwargs": "gymnasium.make_vec's own",
        "wrappers": "gymnasium.make_vec's own: wrap the env in a registered env of your own",
        "env_id": "the env: --env",
        "threads": "--env-threads",
        "note": "make_vector_env's own",
    }
)
# EnvPool's options that make_vector_env sets itself (its pool's size, threads, seeds and API): refused there too
ENVPOOL_OWN = MappingProxyType(
    {
        "batch_size": OWN_OPTIONS["num_envs"],
        "seed": OWN_OPTIONS["seed"],
        "env_seed": OWN_OPTIONS["seed"],
        "num_threads": "EnvPool's threads: --env-threads",
        "thread_affinity_offset": "EnvPool's threads: --env-threads",
        "env_type": "EnvPool's API: gymnasium's",
        "max_num_players": "EnvPool's multi-player envs, which flipes does not step",
        "gym_reset_return_info": "EnvPool's API: gymnasium's",
        "base_path": "EnvPool's assets, which it finds itself",
        "reward_threshold": "EnvPool's record of the solved level: --target says where flipes stops",
    }
)
# what gymnasium.make takes beside the env class's options (it wraps the env with them)
GYMNASIUM_MAKE = frozenset({"max_episode_steps", "disable_env_checker", "render_mode"})


def constructor_options(creator: Any) -> frozenset[str] | None:
    """The keyword options an env's creator (a class or function) takes, following ``**kwargs`` up the classes that
    pass them on (gymnasium's MuJoCo envs to ``MujocoEnv``); None where they cannot be known (a ``**kwargs`` of a
    function, a builtin)."""
    if isinstance(creator, type):
        inits = [k.__dict__["__init__"] for k in creator.__mro__ if "__init__" in k.__dict__ and k is not object]
    else:
        inits = [creator]
    names: set[str] = set()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for init in inits:
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):  # a builtin or C type: no signature to read
            return None
        names |= {p.name for p in params if p.kind in keyword and p.name not in ("self", "cls")}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return frozenset(names)
    return None


def check_env_options(
    name: str,
    engine: str,
    kwargs: Mapping[str, Any],
    takes: frozenset[str] | None,
    refused: Mapping[str, str] = MappingProxyType({}),
    also: frozenset[str] = frozenset(),
) -> None:
    """Raise an :class:`EnvOptionError` for an option of ``kwargs`` that flipes sets itself (``refused``: what sets it),
    or that ``name``'s constructor on ``engine`` does not take (``takes``, None where unknown: the env then says;
    ``also``: what the engine takes beside the constructor's options)."""
    for key in kwargs:
        if key in refused:
            raise EnvOptionError(f"{name}: option {key!r} is flipes' own ({refused[key]}); leave it out of the env's options")
    if (error := _unknown_option(name, engine, kwargs, takes, also)) is not None:
        raise error


def _unknown_option(
    name: str, engine: str, kwargs: Mapping[str, Any], takes: frozenset[str] | None, also: frozenset[str] = frozenset()
) -> EnvOptionError | None:
    """The error naming the first option of ``kwargs`` that ``takes`` (and ``also``) lacks, and the options it has, but
    those flipes sets itself; None where there is none, or ``takes`` is unknown."""
    if takes is None:
        return None
    unknown = [key for key in kwargs if key not in takes | also]
    if not unknown:
        return None
    valid = sorted(takes - set(OWN_OPTIONS) - set(ENVPOOL_OWN if engine == "EnvPool" else ()))
    close = difflib.get_close_matches(unknown[0], valid, n=3)
    guess = f"did you mean {', '.join(close)}? " if close else ""
    options = ", ".join(valid) or "none"
    return EnvOptionError(f"{name} ({engine}) takes no option {unknown[0]!r}; {guess}its options: {options}", unknown[0])


def _gymnasium_refusal(name: str, kwargs: Mapping[str, Any], envpool: EnvOptionError) -> EnvOptionError | None:
    """Where gymnasium has no env ``name`` taking every option of ``kwargs``, the error naming both engines' refusals
    (``envpool``: EnvPool's); None where it has, as far as its signature tells (where its module cannot be loaded here,
    making it names the package to install)."""
    try:
        spec = _gymnasium_spec(name, name)
    except EnvError:
        return envpool
    takes = _creator_options(spec.entry_point) if spec.entry_point is not None else None
    refused = _unknown_option(name, "gymnasium", kwargs, takes, GYMNASIUM_MAKE)
    return None if refused is None else EnvOptionError(f"{refused}; and {envpool}", refused.option)


def gymnasium_entry_options(name: str) -> frozenset[str] | None:
    """The constructor options of gymnasium's single env of ``name`` (its ``entry_point``), None where unknown."""
    try:
        spec = gym.spec(name)
    except gym.error.Error:
        return None
    return None if spec.entry_point is None else _creator_options(spec.entry_point)


def _creator_options(entry_point: Any) -> frozenset[str] | None:
    """:func:`constructor_options` of a gymnasium entry point (a ``module:Name`` string or a callable); None where it
    cannot be loaded here (a missing package: making the env says so)."""
    try:
        creator = entry_point if callable(entry_point) else gym.envs.registration.load_env_creator(entry_point)
    except Exception:  # DependencyNotInstalled, an ImportError of the user's module: the make names it
        return None
    return constructor_options(creator)


def _envpool_options(name: str) -> frozenset[str] | None:
    """The config keys of EnvPool's ``name`` (its ``envpool.make`` options); None where EnvPool does not tell them."""
    try:
        keys = default_spec(name)._config_keys
    except Exception:  # another EnvPool version's internals: envpool.make names an unknown option itself
        return None
    return frozenset(keys)


# gymnasium packages whose steps cost enough (a physics engine) that worker processes beat one loop
_HEAVY_ENTRY_POINTS = ("gymnasium.envs.mujoco", "gymnasium.envs.box2d")
# packages whose ids register a vector_entry_point that is another env than copies of their entry_point:
# gymnasium's (CartPole-v1's numpy CartPoleVectorEnv seeds all copies from one generator) and ale_py's (ALE/Pong-v5's
# AtariVectorEnv gives 84x84 grayscale frame stacks, not AtariEnv's (210, 160, 3) RGB frames)
OTHER_VECTOR_ENVS = ("gymnasium.", "ale_py.")


def _described(x: Any) -> str:
    """A value an env returned, as an error names it: its type, and its shape and dtype where it has them."""
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of {len(x)}"
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return f"a {type(x).__name__}"
    return f"a {type(x).__name__} of shape {tuple(shape)} and dtype {str(dtype).removeprefix('torch.')}"


def reset_observations(out: Any, env: Any) -> Any:
    """The observations of what a vector env's ``reset`` returned, ``(observations, info)``; a UsageError
    naming gymnasium's API where it returned something else (the observations alone: gym's old API)."""
    name = f"{type(getattr(env, 'unwrapped', env)).__name__}.reset()"  # the user's env, not a wrapper of flipes
    if isinstance(out, tuple | list) and len(out) == 2:
        _check_observations(out[0], env, name)
        return out[0]
    raise UsageError(
        "--env", f"{name} returned {_described(out)}, not gymnasium's (observations, info)", "return obs, {} from reset"
    )


def _check_observations(obs: Any, env: Any, name: str) -> None:
    """A UsageError naming both ways out where ``obs`` of a Box space are not ``(num_envs, *shape)``: the policy, built
    for the declared shape, would otherwise fail inside flipes with torch's error."""
    space, shape = getattr(env, "single_observation_space", None), getattr(obs, "shape", None)
    if not isinstance(space, gym.spaces.Box) or shape is None:  # a Dict's or Tuple's entries: flattened by flipes
        return
    expect = (env.num_envs, *space.shape)
    if tuple(shape) != expect:
        raise UsageError(
            "--env",
            f"{name} returned observations of shape {tuple(shape)} for {env.num_envs} envs of {space}",
            f"return shape {expect}, or declare the shape they have in single_observation_space",
        )


def check_step(out: Any, env: Any, outputs_only: bool = False, actions: Any = None) -> None:
    """Raise a UsageError naming the fix unless ``out``, what a vector env of ``env.num_envs`` copies returned from
    ``step``, is gymnasium's ``(observations, rewards, terminated, truncated, infos)``: rewards of shape
    ``(num_envs,)``, the two flags booleans of that shape. ``outputs_only``: their number alone. Given the finite
    ``actions`` of a first step (a bounded action space's), non-finite rewards are the env's too (else a nan return is
    blamed on ``--sigma``)."""
    name = step_name(env)
    if not isinstance(out, tuple | list) or len(out) != 5:
        raise UsageError(
            "--env",
            f"{name} returned {_described(out)}, not gymnasium's (observations, rewards, terminated, truncated, infos)",
            "return those five (the old API's done is terminated | truncated: truncated marks a time limit)",
        )
    if outputs_only:
        return
    n = env.num_envs
    obs, reward, terminated, truncated, _ = out
    _check_observations(obs, env, name)
    shape = tuple(getattr(reward, "shape", np.shape(reward)))
    if shape != (n,):
        raise UsageError("--env", f"{name} returned rewards of shape {shape} for {n} envs", f"return one per env, shape ({n},)")
    for what, flags in (("terminated", terminated), ("truncated", truncated)):
        flags = flags if isinstance(flags, Tensor) else np.asarray(flags)
        boolean = flags.dtype == torch.bool if isinstance(flags, Tensor) else flags.dtype == np.bool_
        if tuple(flags.shape) != (n,) or not boolean:
            raise UsageError(
                "--env",
                f"{name} returned {what} as {_described(flags)} for {n} envs",
                f"return one bool per env, shape ({n},) (e.g. done > 0.5, or done.bool())",
            )
    if actions is not None:
        check_first_rewards(reward, actions, env)


def step_name(env: Any) -> str:
    """``"<the user's env class>.step()"``, what error messages about ``env``'s steps name: not a wrapper of flipes',
    nor gymnasium's SyncVectorEnv or AsyncVectorEnv around copies of one's own gym.Env (the latter's copies live in
    worker processes: named by its id's entry point, or by its env_fns where they are the class)."""
    unwrapped = getattr(env, "unwrapped", env)
    if isinstance(unwrapped, gym.vector.SyncVectorEnv) and unwrapped.envs:
        unwrapped = unwrapped.envs[0].unwrapped
    if isinstance(unwrapped, gym.vector.AsyncVectorEnv):
        spec = getattr(unwrapped, "spec", None)  # gymnasium.make_vec's; an id's entry point, its string resolved
        made = _class_name(getattr(spec, "entry_point", None)) or _class_name(next(iter(unwrapped.env_fns), None))
        if made is not None:
            return f"{made}.step()"
    return f"{type(unwrapped).__name__}.step()"


def _class_name(maker: Any) -> str | None:
    """The name of the gym.Env class ``maker`` makes: the class itself, a functools.partial of it, or an entry point
    string naming it; None for anything else (a lambda, a function: what they make is unknown without calling them)."""
    while isinstance(maker, functools.partial):
        maker = maker.func
    if isinstance(maker, str):
        try:
            maker = gym.envs.registration.load_env_creator(maker)  # imported already: its copies were made from it
        except (ImportError, AttributeError, ValueError):
            return None
    return maker.__name__ if isinstance(maker, type) else None


def check_first_rewards(reward: Any, actions: Any, env: Any) -> None:
    """Raise a NonFiniteRewards naming ``env`` where the rewards of a first step, from the states its reset drew, hold
    nan or inf while the ``actions`` it was given (the stepped envs' rows) are all finite: no step size made them so.
    An unbounded Box's actions are the policy's outputs unsquashed, where a huge σ makes finite ones that overflow a
    reward: left to --sigma's message."""
    space = getattr(env, "single_action_space", None)
    if isinstance(space, gym.spaces.Box) and not space.is_bounded():
        return
    reward = reward if isinstance(reward, Tensor) else torch.as_tensor(np.asarray(reward), device="cpu")
    if not reward.is_floating_point() or bool(torch.isfinite(reward).all()):  # once per rollout: one read
        return
    if not isinstance(actions, Tensor):
        try:
            actions = torch.as_tensor(np.asarray(actions), device="cpu")
        except (TypeError, ValueError, RuntimeError):  # a Dict or Tuple space's actions: whose nan it is, unknown
            return
    if actions.is_floating_point() and not bool(torch.isfinite(actions).all()):  # the policy's: said as --sigma's
        return
    bad = int((~torch.isfinite(reward)).sum())
    raise NonFiniteRewards(  # the name only now: an AsyncVectorEnv's resolves its id's entry point
        f"{step_name(env)} returned {bad} nan or inf reward(s) of {reward.numel()} at the first step, for finite actions"
    )


class NonFiniteRewards(UsageError):
    """An env's first step gave nan or inf rewards for finite actions: the env's doing (or its options'), whatever the
    step size; ``env_kwargs``, the options it was made with, are named as suspects."""

    def __init__(self, problem: str, env_kwargs: Mapping[str, Any] | None = None) -> None:
        fix = "return finite rewards from every state its reset draws (look for 0/0, log(0), sqrt of a negative, inf - inf)"
        options = f", or check the env and its --env-kwargs {json.dumps(dict(env_kwargs))}" if env_kwargs else ""
        super().__init__("--env", f"{problem}: the returns are not finite", fix + options)
        self.cause = problem


class NumpyToTorch(gym.vector.VectorWrapper):
    """A vector env seen through torch: actions in, observations, rewards and flags out as tensors.

    An env that speaks numpy (gymnasium's) gets numpy actions; one that already speaks torch (its
    ``reset`` returned tensors: a batched env of your own) gets the actions as tensors, and its
    tensors pass through. Dict and Tuple observations come out flattened into one Box
    (:mod:`flipes.rl.spaces`; ``source_observation_space`` keeps the env's own).
    (gymnasium's own wrapper needs the extra ``array_api_compat`` package for numpy alone.)

    Args:
        env: a gymnasium ``VectorEnv``.
        device: where the returned tensors live; ``None``: numpy arrays on the CPU, an env's
            tensors where they are.
        speaks_torch: whether ``env`` takes tensor actions; ``None``: learnt at each ``reset``.
    """

    def __init__(
        self, env: gym.vector.VectorEnv, device: str | torch.device | None = "cpu", speaks_torch: bool | None = None
    ) -> None:
        super().__init__(env)
        self.device = None if device is None else torch.device(device)
        self.speaks_torch = speaks_torch
        self.source_observation_space = env.single_observation_space
        flat = flat_observation_space(env.single_observation_space)
        if flat is not None:
            self.single_observation_space = flat
            self.observation_space = gym.vector.utils.batch_space(flat, env.num_envs)

    def _torch(self, x: Any) -> Tensor:
        if isinstance(x, Tensor):
            return x if self.device is None else x.to(self.device)
        return torch.as_tensor(np.asarray(x), device=self.device or "cpu")  # not the default device: numpy data is on the host

    # an own env's physical constants and ranges (envs/physics.py) read and set through the wrapper, as on flipes' envs,
    # which make_vector_env returns unwrapped: set on the wrapper alone, a curriculum's range would change nothing
    def __getattr__(self, name: str) -> Any:  # only for what the wrapper lacks
        if _physics_option(self.__dict__.get("env"), name):
            return getattr(self.env.unwrapped, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if _physics_option(self.__dict__.get("env"), name):
            setattr(self.env.unwrapped, name, value)
        else:
            super().__setattr__(name, value)

    def observations(self, obs: Any) -> Tensor:
        """The env's observations as this wrapper returns them: a tensor, Dict and Tuple ones flattened."""
        if isinstance(self.source_observation_space, STRUCTURED):
            obs = flatten_observations(self.source_observation_space, obs)
        return self._torch(obs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict]:
        out = self.env.reset(seed=seed, options=options)
        obs, info = reset_observations(out, self.env), out[1]
        self.speaks_torch = holds_tensors(obs)
        return self.observations(obs), info

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        if self.speaks_torch:  # a tensor as it is; anything else from the host (torch.as_tensor alone: the default device)
            a = actions if isinstance(actions, Tensor) else torch.as_tensor(np.asarray(actions), device="cpu")
        else:
            a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        out = self.env.step(a)
        check_step(out, self.env, outputs_only=True)  # the rest is checked where the rollout reads it
        obs, reward, terminated, truncated, info = out
        return self.observations(obs), self._torch(reward), self._torch(terminated), self._torch(truncated), info


def _physics_option(env: gym.vector.VectorEnv | None, name: str) -> bool:
    """Whether ``name`` is a physical constant or its range (:mod:`envs.physics`) of ``env``'s unwrapped env."""
    if env is None or name.startswith("_"):
        return False
    flipes_envs()
    from envs.physics import Constant, Range

    return isinstance(getattr(type(env.unwrapped), name, None), Constant | Range)


def available_cores(ranks_on_node: int = 1) -> int:
    """Cores this process may use: its CPU affinity, shared by ``ranks_on_node`` processes unless the
    launcher already bound each to its own cores (an affinity smaller than the machine)."""
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        mine = os.cpu_count() or 1
    if mine < (os.cpu_count() or mine):
        return mine
    return max(1, mine // max(1, ranks_on_node))


def split_env_id(env_id: str) -> tuple[str, str]:
    """``"envpool:Hopper-v5"`` -> ``("envpool", "Hopper-v5")``; no prefix -> ``("auto", id)``."""
    prefix, sep, rest = env_id.partition(":")
    if sep and prefix in BACKENDS:
        return prefix, rest
    return "auto", env_id


def registered_id(env_id: str) -> tuple[str, str]:
    """An env id's engine and the id gymnasium registers, without the module that registers it: ``"envpool:Hopper-v5"``
    -> ``("envpool", "Hopper-v5")``, ``"mymodule:mine/Task-v0"`` and ``"mine/Task-v0"`` -> ``("auto", "mine/Task-v0")``
    (one env: the module only makes the id known)."""
    engine, name = split_env_id(env_id)
    return engine, name.rpartition(":")[2]


def base_id(env_id: str) -> str:
    """The env's gymnasium name: no engine prefix, no ``flipes/`` namespace (``envpool:Hopper-v5``
    and ``flipes/CartPole-v1`` -> ``Hopper-v5``, ``CartPole-v1``)."""
    _, name = split_env_id(env_id)
    return name.removeprefix("envs:").removeprefix("flipes/")


def print_note(text: str) -> None:
    """One line to stderr, prefixed ``flipes:``."""
    to_stderr(f"flipes: {text}")  # flushed where it can be: a notebook's stand-in may have write alone


def make_vector_env(
    env_id: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    threads: int = 0,
    note: Callable[[str], None] | None = print_note,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies that takes and returns torch tensors on ``device``.

    Args:
        env_id: a ``flipes/`` id, or a gymnasium id with an optional backend prefix (see the
            module's table).
        num_envs: copies.
        device: where observations, rewards and flags are returned (CPU engines copy to it).
        threads: EnvPool threads or gymnasium worker processes; 0 takes every core this process
            may use (:func:`available_cores`).
        note: receives one line when the engine falls back to a slower one, and one when Dict or
            Tuple observations are flattened into a Box (``None``: silent).
        **kwargs: the env's constructor options, passed to the engine that makes it (``gymnasium.make_vec``, so the
            env class of the id's ``entry_point`` or ``vector_entry_point``; ``envpool.make``). An option the env does
            not take, or one of EnvPool's that flipes sets itself (its seeds, threads and batch), raises an
            :class:`EnvOptionError` naming it.

    An id registered with a ``vector_entry_point`` and no ``entry_point`` (a batched env of your own,
    numpy or torch) is made by it, given ``device=`` where its constructor takes one. Dict and Tuple
    observations come out flattened into one Box on every engine (:mod:`flipes.rl.spaces`).
    """
    from flipes.config import check_threads
    from flipes.es.checks import as_index

    workers = as_index(threads)  # not a TypeError of the comparison below for None or "2", nor 1.5 taken as a count
    if workers is None:
        raise ValueError(
            "make_vector_env: threads is the number of EnvPool threads or gymnasium worker processes, an integer "
            f"(0: every core this process may use), got {threads!r}"
        )
    # as --env-threads: EnvPool takes any count (-3, 100000) and async workers are processes, one per thread
    check_threads("threads", workers, "every core this process may use", per_core=4)
    threads = workers
    count = as_index(num_envs)  # not gymnasium's IndexError for 0, numpy's for 1.5, a str compared with an int
    if count is None or count < 1:
        raise ValueError(f"make_vector_env: num_envs is the number of copies, an integer of at least 1, got {num_envs!r}")
    num_envs = count
    if isinstance(env_id, str) and any(c.isspace() for c in env_id):  # gymnasium's "Malformed environment ID" hides it
        where = "a space inside it" if env_id.strip() == env_id else "a space before or after it"
        raise EnvError(f"env id {env_id!r} has {where}; use {''.join(env_id.split())!r}")
    try:  # a name torch has no device for: one line, not torch's list of every device type it knows
        torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError("--device", f"unknown device {device!r}", "use cpu, cuda, cuda:N or mps") from None
    try:
        env = _engine_env(env_id, num_envs, device, threads, note, **kwargs)
    except SpaceError as e:
        raise EnvError(f"{env_id!r}: {e}") from None
    except EnvOptionError as e:  # a physical constant or its range given to gymnasium's or EnvPool's env: flipes' takes it
        twin = _flipes_twin(env_id, e.option)
        if twin is None:
            raise
        raise EnvOptionError(f"{e}; {twin} takes it (--env {twin})", e.option) from None
    except (EnvError, UsageError):
        raise
    # how engines refuse an option's value: a missing file (a MuJoCo xml_file) is an OSError, EnvPool's C++ a RuntimeError,
    # gymnasium's MuJoCo frame_skip 0 a ZeroDivisionError
    except (TypeError, ValueError, AssertionError, LookupError, OSError, RuntimeError, ArithmeticError) as e:
        if not kwargs:
            raise
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise EnvOptionError(
            f"{base_id(env_id)} failed with the options {json.dumps(kwargs, default=repr)} ({clip(detail, 300)}); "
            "fix their values (the env's own error is in parentheses)"
        ) from e
    source = getattr(env, "source_observation_space", None)
    if isinstance(source, STRUCTURED) and note is not None:
        what = f"{base_id(env_id)}'s {type(source).__name__} observations are flattened into one Box"
        note(f"{what} of {env.single_observation_space.shape[0]} ({layout(source)})")
    return env


def _flipes_twin(env_id: str, option: str | None) -> str | None:
    """The ``flipes/`` id of ``env_id``'s env where it takes ``option``, which ``env_id``'s engine refused (CartPole's
    ``length_range``: domain randomization is flipes' torch envs'); None where there is none."""
    name = registered_id(env_id)[1]
    if option is None or name.startswith("flipes/"):
        return None
    flipes_envs()
    twin = f"flipes/{name}"
    if twin not in gym.registry:
        return None
    takes = _creator_options(gym.spec(twin).vector_entry_point)
    return twin if takes is not None and option in takes else None


def _engine_env(
    env_id: str, num_envs: int, device: str | torch.device, threads: int, note: Callable[[str], None] | None, **kwargs: Any
) -> gym.vector.VectorEnv:
    if env_id.startswith(("flipes/", "envs:flipes/")):
        env_id = env_id.removeprefix("envs:")
        flipes_envs()

        if kwargs and env_id in gym.registry:
            check_env_options(env_id, "flipes' torch env", kwargs, _creator_options(gym.spec(env_id).vector_entry_point))
        try:
            return gym.make_vec(env_id, num_envs=num_envs, device=device, **kwargs)
        except gym.error.DependencyNotInstalled as e:  # the MuJoCo ids without MuJoCo Warp: the message says what to install
            raise EnvError(f"{env_id!r}: {e}") from e
        except gym.error.Error as e:
            raise EnvError(f"unknown env id {env_id!r}; {_did_you_mean(env_id)}flipes has {_flipes_ids()}") from e
    backend, name = split_env_id(env_id)
    threads = threads or available_cores()
    why = ""  # why the auto engine steps an id of EnvPool's in gymnasium
    if backend in ("auto", "envpool"):
        ids = envpool_ids()
        if name in ids:
            check_env_options(name, "EnvPool", kwargs, None, ENVPOOL_OWN)
            refused = _unknown_option(name, "EnvPool", kwargs, _envpool_options(name))
            if refused is None:
                try:  # flipes' own checks of EnvPool's values: their line as it is, not as the env's error
                    check_option_types(name, kwargs)
                    check_atari_options(name, kwargs)
                except (TypeError, ValueError) as e:
                    raise EnvOptionError(str(e)) from None
                return EnvPoolVectorEnv(name, num_envs, threads=threads, device=device, **kwargs)
            # EnvPool's env takes other options than gymnasium's (LunarLander's continuous is an id of its own there):
            # the auto engine takes gymnasium's env where it takes them
            if backend == "envpool":
                raise refused
            if (both := _gymnasium_refusal(name, kwargs, refused)) is not None:
                raise both
            key = next(k for k in kwargs if k not in (_envpool_options(name) or ()))
            stem, _, version = name.rpartition("-")
            other = f"{stem}Continuous-{version}" if key == "continuous" else ""
            why = f"EnvPool's {name} takes no option {key!r}" + (f" ({other} is EnvPool's continuous one)" * (other in ids))
        if backend == "envpool":
            if not ids:
                raise EnvError(
                    f"{env_id!r} needs EnvPool, which is not installed; pip install 'flipes[envpool]' "
                    f"(Linux), or use gymnasium:{name}"
                )
            close = difflib.get_close_matches(name, sorted(ids), n=3)
            other = f"did you mean {', '.join(close)}?" if close else "envpool.list_all_envs() lists its ids"
            if name in gym.registry:
                other += f"; or use gymnasium:{name}"
            raise EnvError(f"EnvPool has no env {name!r}; {other}")
    spec = _gymnasium_spec(name, env_id)
    creators = (spec.entry_point, spec.vector_entry_point)
    if note is not None and any(str(getattr(c, "__module__", c)).startswith("__main__") for c in creators if c is not None):
        script = main_module()  # a notebook's: none, its cells cannot be imported
        how = f"--env {script}:{name} imports {script} (its training kept under if __name__ == '__main__')" if script else ""
        note(
            f"{name} is registered by the running script, so flipes evaluate and flipes export need its module: "
            f"{how}{', or ' if script else ''}register it in a module of yours and pass --env mymodule:{name}"
        )
    # an id of one's own registering both (the one env to render, the batched one to train): the batched one, as
    # gymnasium.make_vec takes it; the packages' ids of OTHER_VECTOR_ENVS keep their engines
    source = str(getattr(spec.entry_point, "__module__", spec.entry_point))
    both = spec.entry_point is not None and spec.vector_entry_point is not None and backend == "auto"
    both = both and not source.startswith(OTHER_VECTOR_ENVS)
    if both and note is not None:
        note(f"{name} steps in its vector_entry_point, a batched env (gymnasium-sync:{name} steps copies of its entry_point)")
    if both or (spec.entry_point is None and spec.vector_entry_point is not None):  # a batched env of its own
        if backend in ("gymnasium-sync", "gymnasium-async"):
            problem = f"{name} has a vector_entry_point only, no entry_point to make one env per copy"
            raise EnvError(f"{env_id!r}: {problem}; use {name}")
        if kwargs:
            check_env_options(name, "its vector_entry_point", kwargs, _creator_options(spec.vector_entry_point))
        env = NumpyToTorch(_own_vector_env(spec, name, num_envs, device, kwargs), device=device)
        env.own_vector_env = True  # its seeding is its author's: seeds_each_env probes it where that matters
        return env
    mode = backend.removeprefix("gymnasium-") if backend.startswith("gymnasium-") else None
    if mode is None:
        heavy = isinstance(spec.entry_point, str) and spec.entry_point.startswith(_HEAVY_ENTRY_POINTS)
        mode = "async" if heavy and threads > 1 and num_envs >= 2 * threads else "sync"
    if kwargs:  # gymnasium makes each copy by its entry_point, with the id's registered kwargs under these
        check_env_options(name, "gymnasium", kwargs, _creator_options(spec.entry_point), also=GYMNASIUM_MAKE)
    workers = _largest_divisor(num_envs, threads)
    if mode == "async" and workers < 2 and backend == "auto":
        mode = "sync"
    if backend == "auto" and note is not None:
        why = why or ("EnvPool is not installed" if not envpool_ids() else "EnvPool has no such env")
        engine = f"{workers} worker processes (gymnasium AsyncVectorEnv)" if mode == "async" else "gymnasium's SyncVectorEnv"
        hint = "; pip install 'flipes[envpool]' for its C++ threads" if not envpool_ids() else ""
        note(f"{name} steps in {engine}: {why}{hint}")
    try:
        if kwargs:
            _step_once(name, uses_mujoco(spec.entry_point), kwargs)
        with mujoco_warnings_once(load=uses_mujoco(spec.entry_point)):  # once, not once per copy
            if mode == "async":
                return WorkerVectorEnv(name, num_envs, workers, device=device, **kwargs)
            return NumpyToTorch(gym.make_vec(name, num_envs=num_envs, vectorization_mode="sync", **kwargs), device=device)
    except gym.error.DependencyNotInstalled as e:
        refused = why if why.startswith("EnvPool's") else ""  # EnvPool has the id, not with these options
        raise EnvError(f"{name!r} needs packages that are not installed; {_install_hint(spec, e, refused)}") from e


def seeds_each_env(env: gym.vector.VectorEnv, env_id: str, device: str | torch.device, **kwargs: Any) -> bool:
    """Whether ``env``'s last env starts as one copy of ``env_id`` reset with ``seed + i`` does, gymnasium's convention
    (env ``i`` seeded from ``seed + i`` alone) that keeps a member's episodes the same however the population is split;
    an env with one generator for all its copies breaks it. Resets ``env``; a rollout resets it again."""
    n, seed = env.num_envs, 12345
    if n < 2:
        return True
    many = reset_observations(env.reset(seed=seed), env)
    one_env = make_vector_env(env_id, 1, device, note=None, **kwargs)
    try:
        one = reset_observations(one_env.reset(seed=seed + n - 1), one_env)
    finally:
        one_env.close()
    return torch.equal(torch.as_tensor(many)[-1].cpu(), torch.as_tensor(one)[0].cpu())


def _step_once(name: str, mujoco: bool, kwargs: dict[str, Any]) -> None:
    """Make one of gymnasium's env ``name`` with the options ``kwargs``, reset it and take a step, here: a value its
    constructor stores unchecked (``{"g": "9.8"}``, a string) fails only when the env steps, in this process or in a
    worker, mid-rollout; this names the options instead, before a run starts."""
    with mujoco_warnings_once(report=False, load=mujoco):  # the run's own env reports MuJoCo's warnings
        env = gym.make(name, **{"disable_env_checker": True, **kwargs})  # an error here: make_vector_env names the options
        try:
            env.action_space.seed(0)
            env.reset(seed=0)
            env.step(env.action_space.sample())
        except Exception as e:  # the env's own error, whatever it is: the run's first step would raise it too
            detail = " ".join(f"{type(e).__name__}: {e}".split())
            raise EnvOptionError(
                f"{name} failed in its first step with the options {json.dumps(kwargs, default=repr)} ({clip(detail, 300)}); "
                "fix their values (the env's own error is in parentheses)"
            ) from e
        finally:
            env.close()


def _own_vector_env(
    spec: gym.envs.registration.EnvSpec, name: str, num_envs: int, device: str | torch.device, kwargs: dict[str, Any]
) -> gym.vector.VectorEnv:
    """The env of an id registered with a ``vector_entry_point`` (beside an ``entry_point`` or not), given ``device=``
    where it takes one."""
    creator = spec.vector_entry_point
    creator = creator if callable(creator) else gym.envs.registration.load_env_creator(creator)
    try:
        params = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # a builtin or C type: no signature to read
        params = ()  # type: ignore[assignment]
    takes = any(p.name == "device" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if takes and "device" not in kwargs and "device" not in spec.kwargs:
        kwargs = {**kwargs, "device": device}
    try:
        env = gym.make_vec(name, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    except TypeError as e:  # its constructor's arguments: gymnasium adds max_episode_steps= where the id registers one
        limit = ["max_episode_steps"] if spec.max_episode_steps is not None else []
        given = ", ".join(dict.fromkeys(["num_envs", *spec.kwargs, *kwargs, *limit]))
        raise EnvError(
            f"{name}'s vector_entry_point failed ({e}); its constructor is given {given}: take each of them (or **kwargs)"
        ) from e
    # the policy is built on one env's spaces: without them, an AttributeError of flipes' wrapper named neither
    lacking = [a for a in ("single_observation_space", "single_action_space") if not isinstance(getattr(env, a, None), gym.Space)]
    if lacking:
        raise EnvError(
            f"{name}'s vector env {type(env.unwrapped).__name__} sets no {' nor '.join(lacking)}; set "
            f"{'them' if len(lacking) > 1 else 'it'} in its __init__ to one env's spaces, and observation_space and "
            "action_space to gymnasium.vector.utils.batch_space(space, num_envs)"
        )
    return env


def _gymnasium_spec(name: str, env_id: str) -> gym.envs.registration.EnvSpec:
    module, sep, short = name.rpartition(":")
    if sep:  # gymnasium's "module:Env-v0": the module registers the id when imported
        try:
            import_here(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise  # the module exists and fails to import something itself: its own traceback
            raise EnvError(
                f"env id {env_id!r}: cannot import {module!r} ({e}); is it on PYTHONPATH (or in this directory)?"
            ) from e
    try:
        return gym.spec(short)
    except gym.error.Error as e:
        if short.startswith("ALE/"):
            raise EnvError(
                f"{env_id!r} needs the Arcade Learning Environment; pip install ale-py (or EnvPool's Atari ids, e.g. Pong-v5)"
            ) from e
        # an id of one's own, registered by a module that nothing imported yet: gymnasium's "module:ID" imports it. Not
        # where gymnasium knows the name in another version (CartPole-v9): its module is imported already
        engine = env_id.removesuffix(name)  # "gymnasium:", or "" for the fastest engine
        unnamed = not sep and isinstance(e, gym.error.NameNotFound | gym.error.NamespaceNotFound)
        own = f"; an env your module registers: '{engine}mymodule:{short}' imports the module first" if unnamed else ""
        raise EnvError(
            f"unknown env id {env_id!r} ({e}); use a flipes id ({_flipes_ids()}), a registered gymnasium id "
            "(gymnasium.pprint_registry() lists them; MuJoCo ids need pip install 'flipes[mujoco]') or an EnvPool id "
            f"(envpool.list_all_envs()){own}"
        ) from e


def _install_hint(spec: gym.envs.registration.EnvSpec, error: Exception, envpool_refused: str = "") -> str:
    """What to install for gymnasium's env of ``spec``; ``envpool_refused``: why EnvPool's env of the id is not it."""
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    if entry.startswith("gymnasium.envs.mujoco"):
        return "pip install 'flipes[mujoco]'"
    if entry.startswith("gymnasium.envs.box2d") and envpool_refused:
        return f"pip install swig 'gymnasium[box2d]' ({envpool_refused})"
    if entry.startswith("gymnasium.envs.box2d"):
        return "pip install swig 'gymnasium[box2d]' (or pip install 'flipes[envpool]' and drop the gymnasium: prefix)"
    return f"{' '.join(str(error).split())}"


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def _did_you_mean(env_id: str) -> str:
    """``did you mean flipes/CartPole-v1? `` for a flipes id typed with a typo or another case; empty where none is close."""
    ids = {k.lower(): k for k in gym.registry if k.startswith("flipes/")}
    close = difflib.get_close_matches(env_id.lower(), sorted(ids), n=1, cutoff=0.8)
    return f"did you mean {ids[close[0]]}? " if close else ""


def _flipes_ids() -> str:
    flipes_envs()
    return ", ".join(sorted(k for k in gym.registry if k.startswith("flipes/")))
