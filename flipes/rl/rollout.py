"""Episodic returns of a whole population in one batched rollout.

Every member runs ``episodes`` episodes at once: the env batch is ``members × episodes`` and the
policy forward for all of them is ONE Flipout pass per time step. Members finish at different
times: a finished episode collects no more reward (its env may auto-reset; that is masked), and
the rollout stops once every episode is done.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from flipes.errors import UsageError, caller_stacklevel
from flipes.es.checks import as_index, integer, nonnegative
from flipes.es.population import Population
from flipes.nn import uncompiled
from flipes.rl.envs import NumpyToTorch, check_first_rewards, check_step, holds_tensors, reset_observations
from flipes.rl.normalize import RunningNorm
from flipes.rl.probe import Probe, check_probe, probe_result
from flipes.rl.recurrent import is_recurrent, stepper
from flipes.rl.spaces import STRUCTURED, flatten_observations, inward_bounds


def episode_seed(seed: int, generation: int, stream: str) -> int:
    """Reset seed of one batch of episodes: a pure function of (seed, generation, stream)."""
    digest = hashlib.blake2b(f"flipes/episodes/{seed}/{generation}/{stream}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def reset_episodes(env: gym.vector.VectorEnv, seed: int, stream: str, generation: int, first: int = 0, common: int = 0) -> Tensor:
    """Reset every env of ``env`` for ``generation`` and return the observations.

    Env ``i`` stands for the global env ``g = first + i``, and its episode is a pure function of
    ``(seed, stream, generation, g)``, whichever process runs it:

    - engines seeded at reset (flipes' envs, gymnasium's): env ``i`` is reset with gymnasium's
      convention, seed ``episode_seed(seed, generation, stream) + g`` (one int seed is passed,
      which gymnasium's vector envs spread so; a vector env of your own with one generator for all
      its envs takes it too, but then a member's episodes depend on how the population is split);
    - engines seeded once at creation (EnvPool, :meth:`EnvPoolVectorEnv.reset_streams`): env ``i``
      owns the stream seeded ``episode_seed(seed, 0, stream) + g`` (mod 2**31) and plays
      its episode number ``generation``.

    ``common``: common random numbers, every member playing the same ``common`` episodes (the
    episodes per member, K): global env ``g`` (member ``g // K``, episode ``g % K``) then takes the
    seed or stream of global env ``g % K``, so that episode ``k`` of every member is member 0's. The
    seeds go to ``reset`` as a list, one per env, which gymnasium's vector envs and flipes' take.
    0, the default: every global env its own. On an EnvPool task that draws in its steps
    (``step_draws()``: LunarLander's engines, sticky actions), whose streams each member's own steps
    move on, common episodes reseed the pool every generation as gymnasium's envs are reseeded.
    """
    n = env.num_envs
    index = [first + i for i in range(n)] if not common else [(first + i) % common for i in range(n)]
    reset_streams = getattr(env, "reset_streams", None)
    step_draws = getattr(env, "step_draws", None)
    if common and step_draws is not None and step_draws():  # members' streams part after generation 0: reseed instead
        reset_streams = None
    if reset_streams is not None:
        base = episode_seed(seed, 0, stream)
        # with common episodes every part of a population holds the same streams, each part a pool of its own
        tagged = {"tag": first} if common else {}
        obs, _ = reset_streams([base + g for g in index], generation, **tagged)
    elif not common:
        obs = reset_observations(env.reset(seed=episode_seed(seed, generation, stream) + first), env)
    else:
        base = episode_seed(seed, generation, stream)
        seeds = [base + g for g in index]
        try:
            reset = env.reset(seed=seeds)
        except (TypeError, ValueError) as e:  # a vector env of one's own that takes one int seed only
            raise TypeError(
                f"common episodes reset {type(env.unwrapped).__name__} with one seed per env, seed=[{seeds[0]}, ...] "
                f"(gymnasium's convention), and it raised {type(e).__name__}: {e}; make its reset take a list of ints, "
                "env i seeded seed[i]"
            ) from e
        obs = reset_observations(reset, env)
        _check_common_starts(obs, common, env)
    return obs


def _check_common_starts(obs: Any, common: int, env: gym.vector.VectorEnv) -> None:
    """A ValueError where two envs given one seed returned other first observations: an env that takes the seed list
    but draws every env's start from one generator (numpy's ``default_rng(seeds)``) would silently give every member
    episodes of its own. Env i's seed is env ``i mod common``'s (the seeds repeat every ``common`` envs). Structured
    observations are left unchecked."""
    if not isinstance(obs, Tensor | np.ndarray):
        return
    rows = torch.as_tensor(obs)
    ref = torch.arange(len(rows), device=rows.device) % common  # the first env of each seed
    same = (rows == rows[ref]) | (rows != rows)  # NaN rows compare as themselves
    if not bool(same.all()):
        i = int((~same).reshape(len(rows), -1).any(1).nonzero()[0])  # Discrete observations are (num_envs,)
        name = type(getattr(env, "unwrapped", env)).__name__
        raise ValueError(
            f"common episodes reset {name}'s envs {i % common} and {i} with one seed, and they returned other "
            "observations; make env i's reset draw from seed[i] alone (gymnasium's convention), or drop common episodes"
        )


def reference_observations(env: gym.vector.VectorEnv, seed: int, steps: int) -> Tensor:
    """``(steps + 1) * env.num_envs`` observations, ``(B, *obs_shape)``: the resets of stream ``"reference"``
    (:func:`reset_episodes`, generation 0) and ``steps`` steps of random actions (the action space seeded with
    ``seed``, one draw per env per step). A pure function of ``(seed, env's id and size, steps)``: every MPI process
    that makes the same env gets the same batch. For a data-dependent initialization
    (:meth:`flipes.rl.CNNPolicy.init_from_data`); an env whose episodes end within ``steps`` gives its last or next
    observations, as its engine does."""
    space = env.single_action_space
    space.seed(seed)
    obs = reset_episodes(env, seed, "reference", 0)
    batch = [obs]
    for _ in range(steps):
        actions = torch.as_tensor(np.stack([space.sample() for _ in range(env.num_envs)]), device=obs.device)
        batch.append(env.step(actions)[0])
    return torch.cat(batch)


def _dtype_error(error: RuntimeError, model: nn.Module, obs: Tensor) -> UsageError | None:
    """torch's dtype clash in a model's first step, where it is the env's observations meeting parameters of
    another float dtype (float64 from MuJoCo into float32 layers), as the mistake it is; else None."""
    params = model.parameters() if isinstance(model, nn.Module) else ()  # a plain function: no dtype to name
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if "dtype" not in str(error) or len(dtypes) != 1 or not obs.is_floating_point() or obs.dtype in dtypes:
        return None
    (dtype,) = dtypes
    name = str(dtype).removeprefix("torch.")
    return UsageError(
        "--model",
        f"the model's {name} parameters got the env's {str(obs.dtype).removeprefix('torch.')} observations "
        f"(torch: {str(error).splitlines()[0]})",
        f"cast them in its forward, obs.to({dtype}), as flipes' own policies do",
    )


STEPPED_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


def check_action_space(space: gym.Space, who: str) -> None:
    """A UsageError (one line) before a run for an action space other than a Box, Discrete, MultiDiscrete or MultiBinary
    (a Dict, Tuple, Text, Sequence, OneOf, Graph): flipes' policies and rollouts give the env one tensor of actions a
    step (torch cannot make one of a dict, a string or a graph; a tuple reads as a recurrent policy's output)."""
    if not isinstance(space, STEPPED_SPACES):
        kind = type(space).__name__
        raise UsageError(
            "--env",
            f"{who}: the env's actions are a {kind} ({space}), and flipes' policies and rollouts step one tensor of actions "
            "(a Box, Discrete, MultiDiscrete or MultiBinary)",
            f"wrap the env in a gymnasium.ActionWrapper whose action() builds the {kind} from a flat Box or MultiDiscrete",
        )


def check_actions(actions: Any, space: gym.Space, n: int | tuple[int, int]) -> None:
    """Raise a UsageError unless ``actions`` (a tensor or array) fit ``n`` envs of action space
    ``space``: ``(n,)`` integers for ``Discrete``, ``(n, *shape)`` for ``Box``, integers of ``(n, *shape)``
    in range for ``MultiDiscrete`` and ``MultiBinary`` (other spaces are left to the env). ``n`` may be
    ``(members, episodes)``, the batch a model sees in training."""
    got_batch = (n,) if isinstance(n, int) else tuple(n)
    if (  # (actions, state): what a policy with memory returns
        isinstance(actions, tuple)
        and len(actions) == 2
        and isinstance(actions[0], Tensor)
        and tuple(actions[0].shape[: len(got_batch)]) == got_batch
    ):
        problem = (
            f"the model returned a {type(actions).__name__} of {len(actions)} (actions and a state?), not a tensor of actions"
        )

        raise UsageError(
            "--model",
            problem,
            "a policy with memory subclasses flipes.rl.RecurrentPolicy (forward(obs, state) -> (actions, state), state None "
            "at an episode's start), so that rollouts carry its state; a memoryless one returns the actions only",
        )
    actions = actions if isinstance(actions, Tensor) else torch.as_tensor(actions, device="cpu")  # only shape and dtype are read
    got, batch = tuple(actions.shape), (n,) if isinstance(n, int) else tuple(n)
    envs = f"{n} envs" if isinstance(n, int) else f"{batch[0]} members × {batch[1]} episodes"
    if isinstance(space, gym.spaces.Discrete):
        expect, how = batch, "return one integer action per env, e.g. logits.argmax(-1), not logits or probabilities"
        if got == expect and actions.dtype.is_floating_point:
            problem = f"the model returned {actions.dtype} actions for {envs} of {space}, which take integers"
            raise UsageError("--model", problem, how)
        if got == expect and actions.numel():  # once per rollout: a head of another width, not the env's traceback
            first = int(space.start)
            lo, hi = (int(v) for v in actions.aminmax())
            if lo < first or hi >= first + space.n:
                take = f"{first} ... {first + space.n - 1}"
                problem = f"the model returned actions from {lo} to {hi} for {envs} of {space}, which take {take}"
                raise UsageError("--model", problem, f"give the model {space.n} outputs and return their argmax(-1)")
    elif isinstance(space, gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        expect = (*batch, *space.shape)
        multi = isinstance(space, gym.spaces.MultiDiscrete)
        how = (
            f"return {space.shape} integers per env, each the argmax(-1) of its component's logits"
            if multi
            else f"return {space.shape} zeros and ones per env, e.g. (logits > 0).to(torch.int8)"
        )
        if got == expect and actions.dtype.is_floating_point:
            problem = f"the model returned {actions.dtype} actions for {envs} of {space}, which take integers"
            raise UsageError("--model", problem, how)
        if got == expect and actions.numel():  # once per rollout, as for Discrete
            lo = torch.as_tensor(space.start if multi else 0, device=actions.device)
            hi = lo + torch.as_tensor(space.nvec if multi else 2, device=actions.device)
            wrong = (actions < lo) | (actions >= hi)
            if bool(wrong.any()):
                at = tuple(int(i) for i in wrong.nonzero()[0])
                value, index = int(actions[at]), at[len(batch) :]
                take = f"{int(lo.expand(space.shape)[index])} ... {int(hi.expand(space.shape)[index]) - 1}"
                problem = f"the model returned {value} at action index {index} for {envs} of {space}, which takes {take} there"
                raise UsageError("--model", problem, how)
    elif isinstance(space, gym.spaces.Box):
        expect, how = (*batch, *space.shape), f"return {space.shape} actions per env (the model's last dimension)"
        if got == expect and np.issubdtype(space.dtype, np.integer) and actions.dtype.is_floating_point:
            # the env would get the floats as they are: an integer Box's env seldom checks
            problem = f"the model returned {actions.dtype} actions for {envs} of {space}, which take integers"
            raise UsageError("--model", problem, f"round them into its dtype, e.g. actions.round().to(torch.{space.dtype})")
    else:
        return
    if got != expect:
        problem = f"the model returned actions of shape {got} for {envs} of {space}, which take {expect}"
        raise UsageError("--model", problem, how)


def continuous(space: gym.Space) -> bool:
    """Whether ``space``'s actions are continuous, a Box of floats: what action noise is added to."""
    return isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating)


def check_action_noise(std: float, space: gym.Space) -> float:
    """``std`` as a float, where Gaussian action noise of it fits ``space``: a finite real number >= 0 (numpy's too), and
    above 0 only for a Box of floats (a discrete action has no nearby action to add noise to).

    Raises:
        TypeError: ``std`` is no real number.
        ValueError: naming the fix, for a std that is negative or not finite, or above 0 for another space.
    """
    try:
        std = nonnegative("action_noise", std)
    except ValueError:
        raise ValueError(
            f"action_noise must be a finite std >= 0, got {std!r}; 0 is none, e.g. 0.01 (OpenAI's ES starter's)"
        ) from None
    if std and not continuous(space):
        raise ValueError(
            f"action_noise {std:g} adds Gaussian noise to continuous actions, and this env's actions are {space}; "
            "leave it 0 (ES explores through the parameter noise σ)"
        )
    return std


class ActionNoise:
    """Gaussian noise added to a training rollout's Box actions (OpenAI's ES starter's ``ac_noise_std``): at step ``t``,
    the actions of the rollout's envs become ``(a + std · z).clamp(low, high)`` with the space's bounds, where row ``e``
    of ``z = torch.randn(pop.popsize · episodes, *action_shape, generator=pop.generator(f"action noise/{t}",
    a.device), dtype=a.dtype)`` is the noise of the population's global env ``e = m·K + k`` (member ``m``, episode
    ``k``).

    So a member's noise is a function of (seed, generation, global member, episode, step) alone, whichever process,
    part of the population (``pop.part``) or pipelined half-batch steps it, and on a resume: every step draws the whole
    population's noise (popsize · K · action_dim normals, about 30 µs for 1,024 × 6 on a CPU core) from a generator
    keyed by the step, and takes its own rows. Noise is in the env's units, as the starter adds it to the action its
    policy emits: after flipes' policies squash into the bounds (``tanh``), so that ``std`` means the same at every
    action (before the squash it would shrink to nothing where the policy saturates), and clipped there, as MuJoCo
    clips a control. A policy of one's own gets it on the actions it returns.

    Args:
        std: the noise's standard deviation, in action units.
        pop: the population (or part) being rolled out.
        episodes: episodes per member, K (the rollout's envs are ``pop.size · K``, members first).
        space: the env's single action space, a Box.
        common: common random numbers (:class:`RolloutFitness`'s ``common_episodes``): every member's episode ``k``
            gets the same noise, row ``k`` of ``z = torch.randn(episodes, *action_shape, generator=...)`` (the same
            generator), so that members differ by their parameters alone.
    """

    def __init__(self, std: float, pop: Population, episodes: int, space: gym.spaces.Box, common: bool = False) -> None:
        self.std, self.pop, self.episodes, self.common = check_action_noise(std, space), pop, episodes, common
        self.rows = range(pop.members.start * episodes, (pop.members.start + pop.size) * episodes)
        # host bookkeeping, moved to the actions' device and dtype once per rollout
        self.low, self.high = torch.as_tensor(space.low, device="cpu"), torch.as_tensor(space.high, device="cpu")
        self._bounds: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def noise(self, step: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``(rows, *action_shape)``: ``std · z`` of this rollout's envs at ``step`` (without the bounds)."""
        gen = self.pop.generator(f"action noise/{step}", device)
        if self.common:  # one draw per episode, every member's the same: (K, ...) repeated over the members
            z = torch.randn(self.episodes, *self.low.shape, generator=gen, dtype=dtype, device=device)
            return self.std * z.repeat(self.pop.size, *(1,) * self.low.dim())
        z = torch.randn(self.pop.popsize * self.episodes, *self.low.shape, generator=gen, dtype=dtype, device=device)
        return self.std * z[self.rows.start : self.rows.stop]

    def __call__(self, actions: Tensor, step: int) -> Tensor:
        """``actions`` ``(rows, *action_shape)`` of step ``step`` (0 at an episode's first) with their noise, in bounds."""
        dtype = actions.dtype if actions.is_floating_point() else torch.get_default_dtype()
        key = (dtype, actions.device)
        if key not in self._bounds:  # once per rollout, not per step
            self._bounds[key] = inward_bounds(self.low.numpy(), self.high.numpy(), dtype, actions.device)
        low, high = self._bounds[key]
        return (actions + self.noise(step, dtype, actions.device)).clamp(low, high)


@dataclass
class Episodes:
    """What :func:`run_episodes` returns: one episode per env, its first since the reset, cut at
    ``max_steps``. Nothing an env does after its episode ends counts, though it may auto-reset and
    keep stepping until the longest episode is over.

    Attributes:
        returns: ``(num_envs,)`` float64, each episode's total reward.
        lengths: ``(num_envs,)`` int64, each episode's steps.
        steps: env interactions of these episodes, the sum of ``lengths``.
        final_obs: ``(num_envs, *obs_shape)`` in the observations' dtype, with ``run_episodes(final_obs=True)``: each
            episode's final observation, the one its last step returned (terminated, truncated or cut at ``max_steps``;
            a SAME_STEP autoreset env's ``info["final_obs"]``, not the next episode's first); ``None`` otherwise.
        probe: ``(num_envs, ...)``, with ``run_episodes(probe=...)``: what the :class:`~flipes.rl.Probe` gathered of each
            env (a copy of its ``result()``); ``None`` otherwise.
    """

    returns: Tensor
    lengths: Tensor
    steps: int
    final_obs: Tensor | None = None
    probe: Tensor | None = None


def check_vector_env(env: Any, who: str) -> None:
    """Raise a TypeError naming the fix unless ``env`` is a vector env (a single ``gymnasium.Env`` is a common slip)."""
    if not isinstance(env, gym.vector.VectorEnv) and not hasattr(env, "num_envs"):
        kind = "a single gymnasium.Env" if isinstance(env, gym.Env) else f"a {type(env).__name__}"
        raise TypeError(
            f"{who} steps a vector env of many copies, got {kind} ({env!r:.80}); make one with "
            "flipes.rl.make_vector_env(id, n), gymnasium.make_vec(id, num_envs=n) or gymnasium.vector.SyncVectorEnv([MyEnv] * n)"
        )
    base = getattr(env, "unwrapped", env)
    # gymnasium's own vector envs without autoreset assert when a finished env is stepped, as a rollout does (masked)
    if (
        isinstance(base, gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv)
        and base.metadata.get("autoreset_mode") == gym.vector.AutoresetMode.DISABLED
    ):
        raise ValueError(
            f"{who} steps every env until all episodes have ended, and gymnasium's {type(base).__name__} with "
            "autoreset_mode DISABLED refuses to step an env whose episode ended; make it with NEXT_STEP (the default) or "
            "SAME_STEP: gymnasium.make_vec(id, n, vector_kwargs={'autoreset_mode': gymnasium.vector.AutoresetMode.NEXT_STEP})"
        )


def check_max_steps(max_steps: Any, who: str, least: int = 0) -> int | None:
    """``max_steps`` as an int of at least ``least`` (numpy's integers too), or ``None``; else a ValueError naming ``who``
    and the fix: a negative cap ended every episode at its reset (every return 0), 1.5 ran 2 steps, and a string failed
    inside the loop."""
    if max_steps is None:
        return None
    steps = as_index(max_steps)
    if steps is None or steps < least:
        raise ValueError(
            f"{who}: max_steps cuts every episode after that many steps, an integer of at least {least}, or None for the "
            f"env's own time limit; got {max_steps!r}"
        )
    return steps


def check_members(members: Any, n: int, record: RunningNorm | None) -> None:
    """With a ``record``, ``members`` (None: one per env) must be an integer of at least 1 dividing the ``n`` envs: member
    ``m`` owns envs ``m·n/members`` to ``(m+1)·n/members - 1``; else a ValueError naming the fix, not torch's view error
    (and 0 is not silently one member per env). Without a ``record`` it is not read."""
    if record is None or members is None:
        return
    count = as_index(members)
    if count is None or count < 1 or n % count:
        raise ValueError(
            f"run_episodes: members={members!r} must be an integer that divides the env's {n} envs (each member's envs "
            "are consecutive, their observations recorded together); None gives each env a member of its own"
        )


LONG_EPISODE = 100_000  # steps after which an episode of an env without a time limit is warned about


@torch.no_grad()
def run_episodes(
    env: gym.vector.VectorEnv,
    act: Callable[[Tensor], Tensor],
    seed: int | list[int] | None = None,
    record: RunningNorm | None = None,
    max_steps: int | None = None,
    members: int | None = None,
    obs: Tensor | None = None,
    pipeline: bool = False,
    action_noise: ActionNoise | None = None,
    final_obs: bool = False,
    probe: Probe | None = None,
) -> Episodes:
    """Run one episode in every env of ``env`` with ``act(obs) -> actions``, at most ``max_steps``
    steps (the env's own truncation otherwise).

    ``seed``: gymnasium's convention, env ``i`` is reset with ``seed + i`` (or ``seed[i]``); or
    ``obs``: the envs were just reset (e.g. by :func:`reset_episodes`) to these observations.
    ``record``: observations of unfinished episodes are added to its pending statistics, per
    member when ``members`` is given (envs ``m·K .. m·K+K-1`` belong to member ``m``).
    ``pipeline``: step one half of the envs while ``act`` computes the other half's actions
    (envs with ``send``/``recv``, as :class:`EnvPoolVectorEnv`). ``act`` is then called on the
    whole batch with half of it stale, so it must compute each row from that row alone, as a
    memoryless policy does (an MLP, not a recurrent policy). The results are the same.
    A :class:`~flipes.rl.RecurrentPolicy` as ``act`` carries its state from step to step.
    ``action_noise``: adds its noise to the actions of each env's step ``t`` before they go to the env.
    ``final_obs``: also return each episode's final observation (:attr:`Episodes.final_obs`: a behaviour
    characterization such as the terminal state, for novelty search), at one more op per step.
    ``probe``: a :class:`~flipes.rl.Probe` called at the reset and after every step, whose ``result()`` is
    :attr:`Episodes.probe` (an episode's mean observation, a position the env keeps in its state); not pipelined.
    """
    check_vector_env(env, "run_episodes")
    check_action_space(env.single_action_space, "run_episodes")
    probe = check_probe(probe, "run_episodes")
    max_steps = check_max_steps(max_steps, "run_episodes")
    check_members(members, env.num_envs, record)
    if obs is None:
        obs = reset_observations(env.reset(seed=seed), env)
    if not isinstance(obs, Tensor):  # a numpy vector env (gymnasium.make_vec), or Dict observations: through torch
        env = NumpyToTorch(env, device=None, speaks_torch=holds_tensors(obs))
        obs = env.observations(obs)
    if pipeline:
        if is_recurrent(act):
            raise ValueError("pipelined rollouts call the policy on half-stale batches: a recurrent policy needs pipeline=False")
        if probe is not None:  # its steps see half of the envs each: a probe's sums would need their rows
            raise ValueError("a probe sees every env at every step, which pipelined rollouts step in halves: pass pipeline=False")
        if not (hasattr(env, "send") and hasattr(env, "recv")):  # else an AttributeError at the first step
            raise ValueError(
                f"pipelined rollouts step half of the envs in the background through send() and recv(), which "
                f"{type(env).__name__} lacks (EnvPool's engine has them); pass pipeline=False (RolloutFitness: None "
                "pipelines where it helps)"
            )
        return _run_pipelined(env, act, obs, record, max_steps, members, action_noise, final_obs)
    act = stepper(act)
    if max_steps is None:  # an env that truncates itself: no steps past its limit (a GPU checks every 16)
        max_steps = getattr(getattr(env, "unwrapped", env), "max_episode_steps", None)  # through gymnasium wrappers
    device = obs.device
    n = env.num_envs
    returns = torch.zeros(n, dtype=torch.float64, device=device)
    lengths = torch.zeros(n, dtype=torch.int64, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    # asking whether any episode is left waits for the device: on a GPU ask every 16 steps (the extra
    # steps of finished episodes are masked), so the host keeps queueing work
    check_every = 1 if device.type == "cpu" else 16
    t = 0
    long = LONG_EPISODE if max_steps is None else None  # no limit at all: say so once episodes run this long
    m = members or n
    # one episode per member, (n, features) observations: the recorder's 4 ops a step instead of record's 12
    recorder = record.recorder(alive, m) if isinstance(record, RunningNorm) and m == n and obs.dim() == 2 else None
    # a view, made once: alive changes in place; only for record (members need not divide the envs without one)
    alive_rows = alive.view(m, n // m) if record is not None and recorder is None else alive
    final = _FinalObs(env, obs, alive) if final_obs else None
    if probe is not None:
        probe.reset(env, obs)
    while max_steps is None or t < max_steps:
        if recorder is not None:
            recorder(obs)
        elif record is not None:
            record.record(obs.view(m, n // m, -1), alive_rows)
        actions = act(obs)
        if t == 0:
            check_actions(actions, env.single_action_space, n)
        if action_noise is not None:
            actions = action_noise(actions, t)
        out = env.step(actions)
        if t == 0:  # once per rollout, as the actions: a user's env whose outputs torch would misread or refuse later
            check_step(out, env, actions=actions)
        obs, reward, terminated, truncated, info = out
        if final is not None:  # before alive drops the episodes this step ended
            final(obs, info)
        # as_tensor only where the env gave no tensor on this device (flipes' envs, NumpyToTorch: never)
        reward = _on(reward, device)
        if probe is not None:  # this step counts for the episodes alive before it; a copy, as alive changes in place
            probe.step(actions, obs, reward, alive.clone(), info)
        t += 1
        # reward·alive is exact in float64, so addcmul_ adds the very sums of returns + reward.double() * alive
        returns.addcmul_(reward, alive)
        lengths += alive
        # alive & ~(terminated | truncated), in two ops: True > x is ~x, False > x is False
        torch.gt(alive, _on(terminated, device), out=alive)
        torch.gt(alive, _on(truncated, device), out=alive)
        if t % check_every == 0 and not alive.any():
            break
        if t == long:
            warnings.warn(
                f"{int(alive.sum())} of {n} episodes are still running after {t:,} steps: if the env has no time limit, "
                "cut them with max_steps= (flipes train --max-episode-steps N)",
                stacklevel=caller_stacklevel(),
            )
    gathered = None if probe is None else probe_result(probe, n)
    return Episodes(returns, lengths, int(lengths.sum()), None if final is None else final.obs, gathered)


class _FinalObs:
    """Each episode's final observation in a rollout loop, kept as it steps: ``__call__(obs, info)`` after each step,
    before ``alive`` drops the episodes that step ended, so ``obs`` holds the observation of every episode's last step
    so far (one op). A SAME_STEP autoreset env returns the next episode's first observation where one ended, and the
    final one in ``info["final_obs"]`` (rows ``info["_final_obs"]``, gymnasium's); those rows are taken from there."""

    def __init__(self, env: Any, obs: Tensor, alive: Tensor) -> None:
        self.obs = obs.clone()  # an episode cut at max_steps = 0 ends at its reset
        self.alive = alive.view(alive.shape[0], *[1] * (obs.dim() - 1))  # a view: alive changes in place
        mode = getattr(getattr(env, "unwrapped", env), "metadata", {}).get("autoreset_mode")
        self.same_step = mode == gym.vector.AutoresetMode.SAME_STEP
        self.source = getattr(env, "source_observation_space", None)  # NumpyToTorch's Dict or Tuple space, flattened

    def __call__(self, obs: Tensor, info: dict[str, Any]) -> None:
        torch.where(self.alive, obs, self.obs, out=self.obs)
        if self.same_step and "_final_obs" in info:
            flags = info["_final_obs"]  # gymnasium's: numpy; an own torch env's: a tensor, maybe on a GPU (no numpy)
            rows = flags.nonzero().flatten().tolist() if isinstance(flags, Tensor) else np.flatnonzero(flags).tolist()
            ended = [info["final_obs"][i] for i in rows]
            if isinstance(self.source, STRUCTURED):
                ended = [flatten_observations(self.source, x, batch_dims=0) for x in ended]
            index = torch.as_tensor(rows, device=obs.device)
            # numpy data is on the host (torch.as_tensor alone: the default device)
            last = torch.stack(
                [x.to(obs.device) if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), device="cpu") for x in ended]
            )
            last = last.to(device=obs.device, dtype=obs.dtype)
            self.obs[index] = torch.where(self.alive[index], last, self.obs[index])  # a later episode's end: not counted


def _on(value: Any, device: torch.device) -> Tensor:
    """``torch.as_tensor(value, device=device)``, without its op where ``value`` already is a tensor there."""
    return value if isinstance(value, Tensor) and value.device == device else torch.as_tensor(value, device=device)


def _run_pipelined(
    env: Any,
    act: Callable[[Tensor], Tensor],
    obs: Tensor,
    record: RunningNorm | None,
    max_steps: int | None,
    members: int | None,
    action_noise: ActionNoise | None = None,
    final_obs: bool = False,
) -> Episodes:
    """:func:`run_episodes` with two halves of the envs in turns: while EnvPool's threads step one
    half, this thread computes the other half's next actions (it pays off from ~128 envs on 2
    cores: ``scripts/results/bench_rollout.md``)."""
    n, device = env.num_envs, obs.device
    m = members or n
    cut = (m + 1) // 2 * (n // m)  # the halves end on a member boundary: a member's sums stay in one call
    halves = (slice(0, cut), slice(cut, n))
    state = obs.cpu().numpy().copy()
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    steps = [0, 0]
    # tensors sharing state's and mask's memory, made once: each step only writes into the arrays
    observed, mask = torch.from_numpy(state), np.zeros(n, dtype=bool)
    masked = torch.from_numpy(mask).view(m, -1)

    def observe(rows: slice) -> None:
        if record is not None:
            mask[:] = False
            mask[rows] = alive[rows]
            record.record(observed.to(device).view(m, n // m, -1), masked.to(device))

    def live(h: int) -> np.ndarray:
        if max_steps is not None and steps[h] >= max_steps:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(alive[halves[h]]) + halves[h].start

    if max_steps is None or max_steps > 0:  # as the serial loop: only observations a policy acts on are recorded
        observe(slice(0, n))
    first = act(observed.to(device))
    check_actions(first, env.single_action_space, n)
    if action_noise is not None:  # both halves at their step 0
        first = action_noise(first, 0)
    actions = first.cpu().numpy()
    ready = [True, True]  # the half's rows of `actions` answer its current observations
    flight: int | None = None
    while True:
        if flight is None:
            for h in (0, 1):
                if ready[h] and len(ids := live(h)):
                    env.send(actions, ids)
                    flight, ready[h] = h, False
                    steps[h] += 1
                    break
        todo = [h for h in (0, 1) if h != flight and not ready[h] and len(live(h))]
        if todo:  # overlaps the half in flight
            fresh = act(observed.to(device))
            for h in todo:  # each half's noise is that of its own next step
                rows = fresh if action_noise is None else action_noise(fresh, steps[h])
                actions[halves[h]] = rows[halves[h]].cpu().numpy()
                ready[h] = True
        if flight is None:
            if not todo:
                break
            continue
        ids, o, r, terminated, truncated = env.recv()
        if steps[flight] == 1:  # each half's first step, as run_episodes' (numpy on the host: no device sync)
            check_first_rewards(r, actions[ids], env)
        state[ids] = o
        returns[ids] += r
        lengths[ids] += 1
        alive[ids] &= ~(terminated | truncated)
        if max_steps is None or steps[flight] < max_steps:  # a half cut at max_steps acts on its observations no more
            observe(halves[flight])
        flight = None
    # an env with send/recv steps no env whose episode ended (EnvPool's DISABLED autoreset), nor a half past max_steps:
    # each row of state holds its episode's final observation
    final = torch.from_numpy(state).to(device) if final_obs else None
    return Episodes(torch.from_numpy(returns).to(device), torch.from_numpy(lengths).to(device), int(lengths.sum()), final)


PIPELINE_MIN_ENVS = 128  # below it, two half batches per step cost more than the overlap saves (bench_rollout.py)


def can_pipeline(env: gym.vector.VectorEnv, model: nn.Module) -> bool:
    """Whether :func:`run_episodes` should pipeline ``model`` on ``env``: the env can step part of
    its envs in the background, the model is a memoryless :class:`~flipes.rl.MLPPolicy`, and there
    are at least ``PIPELINE_MIN_ENVS`` envs."""
    from flipes.rl.policy import MLPPolicy

    memoryless = isinstance(uncompiled(model), MLPPolicy)  # torch.compile(policy) too
    return hasattr(env, "send") and hasattr(env, "recv") and memoryless and env.num_envs >= PIPELINE_MIN_ENVS


class RolloutFitness:
    """``fitness(model, pop)``: each member's mean return over ``episodes`` episodes.

    Args:
        env: a vector env with ``pop.size * episodes`` envs, torch in and out
            (``flipes.rl.make_vector_env``); or with ``part * episodes`` envs, to roll the population out
            in parts of ``part`` members one after another (``pop.split(part)``: a population whose
            model or envs do not fit memory at once), each member's episodes the same as in one pass.
        episodes: episodes per member, K.
        seed: with the generation, seeds the episodes' resets.
        obs_norm: the ``RunningNorm`` the population's observations are recorded into (its statistics
            stay frozen until ``obs_norm.update()``, called after ``tell``); by default the model's
            ``obs_norm`` where it holds one (``MLPPolicy``, ``GRUPolicy``, a policy of your own).
        pipeline: overlap env steps with the policy forward (:func:`run_episodes`); ``None``
            turns it on where it is safe and helps: an env with ``send``/``recv`` (EnvPool) and a
            memoryless :class:`~flipes.rl.MLPPolicy`.
        reward_shift: subtracted from every step's reward in the fitness (not in reported
            returns): a locomotion env's alive bonus, which otherwise makes standing still a
            strong local optimum (Mania et al., 2018, arXiv:1803.07055, ARS's "shift").
        max_steps: cut every episode after this many steps, at least 1 (``None``: the env's own time limit).
        action_noise: the std of Gaussian noise added to every action of a Box space before it goes to the env, then
            clipped to the bounds (OpenAI's ES starter's ``ac_noise_std``; :class:`ActionNoise`: keyed by the FlipES's
            seed, the generation and the step, drawn for the whole population); 0, the default, adds none. An
            evaluation of the center policy (``run_episodes``) is left without it.
        final_obs: also keep each episode's final observation (:func:`run_episodes`'s ``final_obs``) in
            ``last_final_obs``: the behaviours of novelty search from the rollouts that give the returns, at one more op
            per step.
        probe: a :class:`~flipes.rl.Probe` that gathers side information of every env from the same episodes (an
            episode's mean observation, a position the env keeps in its state): each call's in ``last_probe``. Such
            rollouts are not pipelined.
        common_episodes: common random numbers: every member plays the same ``episodes`` episodes, episode ``k`` of each
            starting from member 0's reset (the same seed, :func:`reset_episodes`'s ``common``, physics drawn at the
            reset such as Pendulum's ``g_range`` included) and meeting the same action noise, so that their fitness
            differs by their parameters alone, as EvoJAX's training rollouts do. A generation then sees ``episodes``
            starts instead of ``pop.size × episodes`` (``scripts/bench_common_episodes.py`` compares the two). False,
            the default: each member its own episodes.

    Attributes:
        timesteps: env steps used so far.
        last_returns: ``(pop.size,)``, each member's mean return of the latest call, without ``reward_shift``.
        last_lengths: ``(pop.size, episodes)`` int64, the steps of each member's episodes in the latest call (members
            first; this process's share under MPI, as ``last_final_obs``): ``max_steps`` where the cut ended one, so
            ``(fitness.last_lengths == fitness.max_steps).float().mean()`` is the fraction cut, for a limit of your own
            that grows with it between calls (OpenAI's ES starter's ``episode_cutoff_mode="adaptive:..."``).
        last_final_obs: ``(pop.size, episodes, *obs_shape)`` with ``final_obs=True``: the final observation of each
            member's episodes in the latest call (members first, as the model sees them; ``[:, 0]`` with one episode),
            terminated, truncated or cut at ``max_steps``; ``None`` otherwise. Of ``pop``'s members: under MPI, this
            process's share (every rank's, in member order: ``es.comm.allgather_tensor(fitness.last_final_obs)``).
        last_probe: ``(pop.size, episodes, ...)`` with a ``probe``: its ``result()`` of each member's episodes in the
            latest call, members first, joined over parts, this process's share under MPI as ``last_final_obs``;
            ``None`` otherwise.
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        episodes: int = 1,
        seed: int = 0,
        obs_norm: RunningNorm | None = None,
        pipeline: bool | None = None,
        reward_shift: float = 0.0,
        max_steps: int | None = None,
        action_noise: float = 0.0,
        final_obs: bool = False,
        probe: Probe | None = None,
        common_episodes: bool = False,
    ) -> None:
        check_vector_env(env, "RolloutFitness")
        check_action_space(env.single_action_space, "RolloutFitness")
        for name, flag in (("common_episodes", common_episodes), ("final_obs", final_obs)):
            if not isinstance(flag, bool | np.bool_):  # a string such as "false" would read as True
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if pipeline is not None and not isinstance(pipeline, bool | np.bool_):
            raise TypeError(f"pipeline must be None (pipelined where it helps), True or False, got {pipeline!r}")
        if obs_norm is not None and not isinstance(obs_norm, RunningNorm):  # else an AttributeError in the first call
            raise TypeError(
                f"RolloutFitness: obs_norm is the flipes.rl.RunningNorm the observations are recorded into (None: the "
                f"model's own obs_norm), got a {type(obs_norm).__name__}"
            )
        seed = integer("seed", seed)  # None, 1.5 or "3" would key other episodes, silently
        if isinstance(reward_shift, bool | np.bool_) or not isinstance(reward_shift, numbers.Real):
            raise TypeError(f"reward_shift must be a number, got {reward_shift!r} ({type(reward_shift).__name__})")
        if not math.isfinite(reward_shift):
            raise ValueError(f"reward_shift must be a finite number (0: no shift), got {reward_shift!r}")
        # 0 would end every episode at its reset: every member's fitness 0
        max_steps = check_max_steps(max_steps, "RolloutFitness", least=1)
        probe = check_probe(probe, "RolloutFitness")
        if probe is not None and pipeline:
            raise ValueError(
                "RolloutFitness: a probe sees every env at every step, which pipelined rollouts step in halves; "
                "leave pipeline None or False"
            )
        action_noise = check_action_noise(action_noise, env.single_action_space)
        episodes = integer("episodes", episodes)
        if episodes < 1:  # else a ZeroDivisionError at the first call
            raise ValueError(f"RolloutFitness: episodes is the episodes per member, at least 1, got {episodes}")
        self.env, self.episodes, self.seed, self.obs_norm, self.pipeline = env, episodes, seed, obs_norm, pipeline
        self.reward_shift, self.max_steps, self.action_noise = float(reward_shift), max_steps, action_noise
        self.timesteps = 0
        self.last_returns: Tensor | None = None
        self.last_lengths: Tensor | None = None
        self.final_obs = bool(final_obs)
        self.last_final_obs: Tensor | None = None
        self.probe = probe
        self.last_probe: Tensor | None = None
        self.common_episodes = bool(common_episodes)
        self._warned = False  # about an obs_norm left unmerged, once

    def __call__(self, model: nn.Module, pop: Population) -> Tensor:
        n, k = pop.size, self.episodes
        per_pass, left = divmod(self.env.num_envs, k)
        if left or not per_pass or n % per_pass or not _parts_fit(pop, per_pass):
            raise ValueError(
                f"the env has {self.env.num_envs} copies but the population needs members × episodes = {n} × {k}; "
                f"make it with num_envs={n * k}, or with parts × {k} for a population evaluated in parts of members "
                f"(a part: a divisor of an ε group's {n // max(len(pop.groups), 1)} members, or whole groups; pop.split)"
            )

        norm = self.obs_norm
        if norm is None and isinstance(getattr(model, "obs_norm", None), RunningNorm):
            norm = model.obs_norm  # left out, the normalization would never learn, silently
        earlier = None if norm is None or norm.pending is None else norm.pending_generation
        if earlier is not None and earlier != pop.generation and not self._warned:
            self._warned = True  # an own loop that forgot the merge: the statistics would never move
            warnings.warn(
                f"obs_norm still holds the observations of generation {earlier} unmerged: call "
                "obs_norm.update() after es.tell() (flipes.train does), or the normalization never learns",
                stacklevel=caller_stacklevel(),
            )
        if per_pass == n:
            returns, self.last_returns, self.last_lengths, self.last_final_obs, self.last_probe = self._rollout(model, pop, norm)
            return returns
        # in parts: the env holds one part; each member's episodes and recorded observations are those of one pass
        before = None if norm is None else norm.pending
        parts, recorded = [], []
        for part in pop.split(per_pass):
            if norm is not None:
                norm.pending = None
            parts.append(self._rollout(model, part, norm))
            if norm is not None:
                recorded.append(norm.pending)
        if norm is not None:
            rows = torch.cat(recorded)
            norm.pending = rows if before is None else before + rows
        returns, unshifted, lengths, finals, probes = zip(*parts, strict=True)  # the parts' columns, in member order
        self.last_returns, self.last_lengths = torch.cat(unshifted), torch.cat(lengths)
        self.last_final_obs = torch.cat(finals) if self.final_obs else None
        self.last_probe = None if self.probe is None else _join_probes(self.probe, probes, per_pass)
        return torch.cat(returns)

    def _rollout(
        self, model: nn.Module, pop: Population, norm: RunningNorm | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """The fitness of ``pop``'s members, their mean returns without ``reward_shift``, their episodes' lengths
        ``(pop.size, episodes)``, with ``final_obs`` their
        episodes' final observations ``(pop.size, episodes, *obs_shape)``, and with a ``probe`` its result
        ``(pop.size, episodes, ...)``."""
        n, k = pop.size, self.episodes
        step = stepper(model)  # a recurrent policy's state lives for this rollout
        checked = False

        def act(obs: Tensor) -> Tensor:  # (n·k, d) -> members first (n, k, d) -> (n·k, ...)
            nonlocal checked
            if checked:
                return step(obs.view(n, k, *obs.shape[1:])).flatten(0, 1)
            try:
                actions = step(obs.view(n, k, *obs.shape[1:]))
            except RuntimeError as e:  # the first step: a model of one's own given the env's dtype, say so
                said = _dtype_error(e, model, obs)
                if said is None:
                    raise
                raise said from None
            check_actions(actions, self.env.single_action_space, (n, k))  # in the model's own shape, before flattening
            checked = True
            return actions.flatten(0, 1)

        # env i of member m, episode k is the global env m·K + k with m the GLOBAL member index, so a
        # member's episodes do not depend on how the population is split across processes
        # (with common_episodes, env m·K + k takes env k's episode: every member plays member 0's)
        common = k if self.common_episodes else 0
        obs = reset_episodes(self.env, self.seed, "population", pop.generation, first=pop.members.start * k, common=common)
        features = math.prod(obs.shape[1:]) if isinstance(obs, Tensor | np.ndarray) else None  # a Dict's: left to record
        if norm is not None and features is not None and features != norm.size:  # else torch's view error at the first step
            raise ValueError(
                f"RolloutFitness: obs_norm records {norm.size} features, and the env's observations have {features} "
                f"(shape {tuple(obs.shape[1:])}); give it a flipes.rl.RunningNorm({features}), or None for the model's own"
            )
        pipeline = self.pipeline if self.pipeline is not None else self.probe is None and can_pipeline(self.env, model)
        if pipeline and is_recurrent(model):
            raise ValueError("pipelined rollouts call the policy on half-stale batches: a recurrent policy needs pipeline=False")
        space = self.env.single_action_space
        noise = ActionNoise(self.action_noise, pop, k, space, common=self.common_episodes) if self.action_noise else None
        ep = run_episodes(
            self.env,
            act,
            record=norm,
            members=n,
            obs=obs,
            pipeline=pipeline,
            max_steps=self.max_steps,
            action_noise=noise,
            final_obs=self.final_obs,
            probe=self.probe,
        )
        self.timesteps += ep.steps
        if norm is not None:
            norm.pending_generation = pop.generation
            norm.pending_members += n
            norm.pending_popsize = pop.popsize
        unshifted = ep.returns.view(n, k).mean(1)  # each member's mean return, for the logs
        returns = ep.returns if not self.reward_shift else ep.returns - self.reward_shift * ep.lengths
        final = None if ep.final_obs is None else ep.final_obs.view(n, k, *ep.final_obs.shape[1:])
        probed = None if ep.probe is None else ep.probe.reshape(n, k, *ep.probe.shape[1:])  # a probe's own layout
        return returns.view(n, k).mean(1), unshifted, ep.lengths.view(n, k), final, probed


def _join_probes(probe: Probe, parts: tuple[Tensor, ...], per_pass: int) -> Tensor:
    """The parts' probe results ``(part size, K, ...)`` joined in member order; a ValueError naming the probe and the fix
    where they differ beyond their rows (trajectories as long as each part's longest episode), not torch's from the join."""
    first = parts[0]
    other = next((p for p in parts if p.shape[2:] != first.shape[2:]), None)
    if other is not None:
        a, b = ((p.shape[0] * p.shape[1], *p.shape[2:]) for p in (first, other))  # as result() returned them: rows = envs
        raise ValueError(
            f"{type(probe).__name__}.result() returned shapes {a} and {b} in two parts of the population (rolled out "
            f"{per_pass} members at a time), which last_probe joins over the members: return one shape beyond the rows "
            "from every rollout (pad a trajectory to max_steps)"
        )
    return torch.cat(parts)


def _parts_fit(pop: Population, size: int) -> bool:
    """Whether ``pop.split(size)`` makes parts of exactly ``size`` members (an env holds a fixed number)."""
    group = pop.size // max(len(pop.groups), 1)
    return size == pop.size or (group % size == 0 if size <= group else size % group == 0)
