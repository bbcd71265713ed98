"""What a :class:`~flipes.config.TrainConfig` builds for :func:`flipes.train`: the population's vector
env, the model, the FlipES, the fitness, rank 0's evaluation of the center policy and the standard
callbacks. Each turns a mistake in the options into a :class:`~flipes.errors.UsageError`."""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from flipes import dist
from flipes.callbacks import (
    Callback,
    Checkpointer,
    CurvePlotter,
    JSONLLogger,
    OutcomePrinter,
    ProgressPrinter,
    TensorBoardLogger,
    WandbLogger,
)
from flipes.config import TrainConfig, resolve_groups
from flipes.errors import UsageError, caller_stacklevel
from flipes.es import FlipES, Population
from flipes.es.checks import INFEASIBLE_FIX, objectives_fix
from flipes.nn.convert import flipout_layers, parameter_report
from flipes.plugins import Plugins
from flipes.rl import (
    POLICIES,
    CNNPolicy,
    RolloutFitness,
    available_cores,
    make_vector_env,
    reference_observations,
    reset_episodes,
    run_episodes,
)
from flipes.rl.envs import EnvError, EnvOptionError, seeds_each_env
from flipes.rl.presets import defaults
from flipes.rl.rollout import check_action_space, continuous
from flipes.search import search_rule, sigma_schedule

Fitness = Callable[[nn.Module, Population], Tensor]


def import_plugins(config: TrainConfig, plugins: Plugins | None = None) -> None:
    """Import the code the options name (--model, --fitness and the evaluate() beside it, --optimizer, --shaping) and
    check how each can be called, without calling it: a name that does not import is a mistake to fix whatever
    else is wrong, so a run names it before looking at its run directory.

    Raises:
        UsageError: naming the option, what cannot be imported or called, and what to do.
    """
    from flipes.search import SHAPINGS

    plugins = plugins or Plugins()
    if config.model:
        plugins.model_factory(config.model)
    if config.fitness:
        check_counts_timesteps(config, plugins.fitness_fn(config.fitness))
        check_reaches_target(config, plugins.evaluate_fn(config.fitness), given=plugins.fitness is not None)
    if config.optimizer:
        plugins.optimizer_fn(config.optimizer)
    if config.algo != "ars" and config.shaping not in SHAPINGS:  # ARS weighs its pairs itself (validate refuses one)
        plugins.shaping_fn(config.shaping)


def check_counts_timesteps(config: TrainConfig, fitness: Fitness) -> None:
    """Refuse ``--max-timesteps`` beside a ``--fitness`` that counts no env steps: the rows' timesteps would stay 0 and
    the budget would never end the run (a ``RolloutFitness``, given as the fitness, counts them). Before the env, the
    model and the run directory, as the code named is checked."""
    if config.max_timesteps and not isinstance(fitness, RolloutFitness):
        raise UsageError(
            "--max-timesteps",
            f"{config.max_timesteps:,} with --fitness {config.fitness}, which counts no env steps (its rows' timesteps "
            "stay 0), so the budget would never end the run",
            "use --generations or --max-seconds; or give a flipes.rl.RolloutFitness as the fitness itself, "
            "flipes.train(fitness=RolloutFitness(env)), which counts them (one called inside a function of one's own does not)",
        )


def check_reaches_target(config: TrainConfig, evaluate: Callable[..., Any] | None, given: bool = False) -> None:
    """Refuse a ``--target`` number beside a ``--fitness`` with no ``evaluate``: the target is an eval_return, which
    such a run never logs (with an env too: the fitness replaces its rollouts and their evaluation), so it would never
    stop the run. An env's preset target is left alone: it was not asked for. ``given``: the fitness is a Python
    object, whose module is not searched for an ``evaluate``. Before the env, the model and the run directory, as
    the code named is checked."""
    number = isinstance(config.target, float | int) and not isinstance(config.target, bool)
    env_id = config.env.strip()
    preset = None if env_id.lower() == "none" else defaults(env_id, config.algo).get("target")
    if number and evaluate is None and config.target != preset:
        fix = "pass flipes.train(evaluate=...)" if given else "define evaluate(model) -> float in the fitness's module"
        raise UsageError(
            "--target",
            f"{config.target:g} with --fitness {config.fitness} and no evaluate(): the run logs no eval_return, so "
            "the target would never stop it",
            f"{fix} to give eval_return, or use --target none",
        )


def _misplaced_options(env_kwargs: Mapping[str, Any], refusal: str) -> str:
    """The fix for an env refusing a training option found among its options (``refusal`` names the one refused): in
    TOML every key below an ``[env_kwargs]`` header belongs to that table, so a table written above them takes them."""
    fields = {f for f in TrainConfig.__dataclass_fields__ if f != "env_kwargs"}
    misplaced = [key for key in env_kwargs if key in fields and f"no option {key!r}" in refusal]
    if not misplaced:
        return ""
    return (
        f"{misplaced[0]} is an option of flipes train, not of the env: in a TOML --config file every key below the "
        f"[env_kwargs] header belongs to that table, so put [env_kwargs] last (or write env_kwargs = {{...}} inline)"
    )


def build_env(
    config: TrainConfig, comm: dist.Comm, device: str, note: Callable[[str], None] | None
) -> gym.vector.VectorEnv | None:
    """The population's vector env: ``members × episodes`` copies for this process's members (None with ``--env none``)."""
    if config.env.strip().lower() == "none":
        return None
    config, _ = resolve_groups(config, comm.size)  # groups=0: the count train() takes
    members = len(dist.split_groups(config.groups, comm.rank, comm.size)) * (config.popsize // config.groups)
    parts = 0 < config.members_per_pass < members  # one part's envs: RolloutFitness rolls the parts out in turn
    if parts:
        members = config.members_per_pass
    threads = config.env_threads or available_cores(comm.local_size)
    try:
        env = make_vector_env(config.env, members * config.episodes, device, threads=threads, note=note, **config.env_kwargs)
    except EnvOptionError as e:
        raise UsageError("--env-kwargs", str(e), _misplaced_options(config.env_kwargs, str(e))) from None
    except EnvError as e:
        raise UsageError("--env", str(e)) from None
    split = (comm.size > 1 and config.comm == "seeds") or parts  # other processes, or parts (not one pass of all)
    if split and comm.rank == 0 and getattr(env, "own_vector_env", False):
        if not seeds_each_env(env, config.env, device, **config.env_kwargs):
            how = "--comm seeds on another process count" if comm.size > 1 else "another --members-per-pass (or none)"
            warnings.warn(
                f"{config.env}: env {env.num_envs - 1} of a reset(seed=s) starts elsewhere than one copy reset with "
                f"seed s + {env.num_envs - 1}, so a member's episodes depend on how the population is split, and "
                f"{how} will not give the same parameters; seed env i from seed + i alone (gymnasium's convention)",
                UserWarning,
                stacklevel=caller_stacklevel(),  # the user's flipes.train line, not flipes'
            )
    space = env.single_action_space
    try:  # before the policy's refusal, whose advice (--model) would stop at the first step
        check_action_space(space, config.env)
    except UsageError:
        env.close()
        raise
    if config.action_noise and not continuous(space):  # named before the run directory is looked at
        env.close()
        raise UsageError(
            "--action-noise",
            f"{config.action_noise:g} adds Gaussian noise to continuous actions, and {config.env}'s are {space}",
            "drop --action-noise for this env (ES explores through the parameter noise σ)",
        )
    return env


def build_model(config: TrainConfig, env: gym.vector.VectorEnv | None, plugins: Plugins | None = None) -> nn.Module:
    """``--model``'s module, else ``--policy``'s policy for the env's spaces (a CNN fitted to frames of random play)."""
    if config.model:
        model = (plugins or Plugins()).model_factory(config.model)(env)
        if not isinstance(model, nn.Module):
            raise UsageError(
                "--model",
                f"{config.model} returned {type(model).__name__}, not a torch.nn.Module",
                "return the model, e.g. torch.nn.Sequential(...)",
            )
        return model
    assert env is not None
    try:
        policy = POLICIES[config.policy](env.single_observation_space, env.single_action_space, hidden=config.hidden)
    except ValueError as e:
        option = "--policy" if config.policy == "cnn" else "--env"  # the CNN refuses the observations, not the env
        raise UsageError(
            option, f"{config.env}: {e}", "or pass --model module:function that builds a policy for these spaces"
        ) from None
    if isinstance(policy, CNNPolicy):
        # at the orthogonal init the CNN's actions hardly depend on the frame (every Pong member lost 21-0 and the
        # first ES steps were zero): its layers are fitted to frames of random play. An env of its own, seeded alike on
        # every process (MPI ranks build the same parameters), so the run's envs and episodes are untouched
        reference = make_vector_env(config.env, REFERENCE_ENVS, "cpu", threads=1, note=None, **config.env_kwargs)
        try:
            policy.init_from_data(reference_observations(reference, config.seed, REFERENCE_STEPS))
        finally:
            reference.close()
    return policy


REFERENCE_ENVS, REFERENCE_STEPS = 8, 64
"""The CNN's data-dependent initialization: 8 envs' resets and 64 steps of random actions, 520 observations (Pong:
about 490 distinct frames, 0.7 s here)."""


def image_note(config: TrainConfig, env: gym.vector.VectorEnv | None) -> str:
    """The note for an MLP or GRU policy built for image observations (a Box of rank 3): they flatten the pixels, and
    ``--policy cnn`` is what such observations are trained with; "" otherwise."""
    if env is None or config.model or config.policy == "cnn":
        return ""
    space = env.single_observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 3:
        return ""
    return (
        f"{config.env} gives images {space.shape} ({space.dtype}): the {config.policy} policy takes their "
        f"{math.prod(space.shape):,} pixels flattened, each normalized by its running statistics; --policy cnn trains "
        "the Nature-DQN CNN on them"
    )


def build_es(config: TrainConfig, model: nn.Module, comm: dist.Comm, plugins: Plugins | None = None) -> FlipES:
    """The FlipES of the run, after checking that the model has something to evolve and that the
    noise rank is below the rank any of its weights can have."""
    layers = flipout_layers(model)
    if not parameter_report(model).evolved:
        raise UsageError(
            "--model",
            "the model has no parameter flipes can perturb",
            "build it from torch.nn layers and return flipes.flipout(model)",
        )
    if config.noise_rank and layers:
        useful = max(min(pw.weight.shape[0], pw.weight[0].numel()) for layer in layers for pw in layer.perturbed_weights())
        if config.noise_rank > useful:
            raise UsageError(
                "--noise-rank",
                f"{config.noise_rank} exceeds the largest rank this model's noise can have ({useful})",
                f"use --noise-rank 1 ... {useful}, or 0 for full-rank noise",
            )
    shaping, optimizer = search_rule(config, plugins)
    config, _ = resolve_groups(config, comm.size)  # groups=0: the count train() takes
    return FlipES(
        model,
        popsize=config.popsize,
        sigma=sigma_schedule(config),
        # a factory (--algo ars's SGD at lr·σ, pgpe's ClipUp, --optimizer FN) sets its own step size from config.lr
        lr=config.lr if optimizer is None or isinstance(optimizer, type) else None,
        seed=config.seed,
        groups=config.groups,
        mirrored=config.mirrored,
        shaping=shaping,
        weight_decay=config.weight_decay,
        optimizer=optimizer,
        comm=comm,
        comm_mode=config.comm,
        noise_rank=config.noise_rank or None,
        sigma_lr=config.sigma_lr,
        track_best=config.track_best,
        hold_noise=config.hold_noise,
    )


def build_fitness(
    config: TrainConfig, env: gym.vector.VectorEnv | None, model: nn.Module, plugins: Plugins | None = None
) -> Fitness:
    """``--fitness``'s function (its outputs checked), else a :class:`RolloutFitness` on the env."""
    if config.fitness:
        fn = (plugins or Plugins()).fitness_fn(config.fitness)
        if isinstance(fn, RolloutFitness) and fn.seed != config.seed:  # a sweep over seeds would replay one set of episodes
            warnings.warn(
                f"fitness=RolloutFitness(..., seed={fn.seed}) draws its episodes from its own seed, not the run's seed "
                f"{config.seed}: runs of other seeds play the same episodes; build it with seed={config.seed}",
                stacklevel=caller_stacklevel(),
            )
        return CheckedFitness(fn, config.fitness, config.members_per_pass)
    assert env is not None
    return RolloutFitness(
        env,
        config.episodes,
        config.seed,
        getattr(model, "obs_norm", None),
        reward_shift=config.reward_shift,
        max_steps=config.max_episode_steps or None,
        action_noise=config.action_noise,
        common_episodes=config.common_episodes,
    )


class CheckedFitness:
    """A user's fitness function whose return value is checked: one real, finite number per member.
    A wrong value is a :class:`UsageError` naming the function (its own exceptions propagate). With
    ``per_pass`` members fewer than the population's, it is called on each part of ``pop.split(per_pass)``."""

    def __init__(self, fn: Fitness, spec: str, per_pass: int = 0) -> None:
        self.fn, self.spec, self.per_pass = fn, spec, per_pass

    @property
    def timesteps(self) -> int:
        """The env steps a ``RolloutFitness`` given as the fitness (rolling out a vector env of one's own) counted, for
        the rows; 0 for any other function, whose own ``timesteps`` (a horizon, say) is its business."""
        return self.fn.timesteps if isinstance(self.fn, RolloutFitness) else 0

    @timesteps.setter
    def timesteps(self, value: int) -> None:  # a resume restores the count
        if isinstance(self.fn, RolloutFitness):
            self.fn.timesteps = value

    def __call__(self, model: nn.Module, pop: Population) -> Tensor:
        if 0 < self.per_pass < pop.size:
            return torch.cat([self._checked(model, part) for part in pop.split(self.per_pass)])
        return self._checked(model, pop)

    def _checked(self, model: nn.Module, pop: Population) -> Tensor:
        with seeded_global_rngs(global_seed(pop.seed, pop.generation)):
            value = self.fn(model, pop)
        what = f"{self.spec} returned"
        fix = f"return a Tensor of {pop.size} finite real numbers, one per member (higher is better)"
        several = objectives_fix(value, pop.size)  # objectives or metrics of each member, EvoTorch's way
        if several is not None:
            raise UsageError("--fitness", f"{what} {several.partition('; ')[0]}", several.partition("; ")[2])
        if isinstance(value, Tensor):
            f = value
        elif isinstance(value, np.ndarray | list | tuple):
            try:
                f = torch.as_tensor(np.asarray(value), device="cpu")
            except (TypeError, ValueError, RuntimeError):
                raise UsageError("--fitness", f"{what} a {type(value).__name__} that is not numbers", fix) from None
        else:
            raise UsageError("--fitness", f"{what} {type(value).__name__} {_short(value)}", fix)
        if f.dtype.is_complex or not (
            f.dtype.is_floating_point or f.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
        ):
            raise UsageError("--fitness", f"{what} values of dtype {f.dtype}", fix)
        if f.shape != (pop.size,):
            whole = "a part of --members-per-pass" if 0 < self.per_pass < pop.popsize else "this process's share"
            held = f"a population of {pop.size} members"
            if pop.size != pop.popsize:  # a part, or one of several processes: not the --popsize the user set
                held = f"{pop.size} members ({whole} of --popsize {pop.popsize})"
            if f.shape == (pop.popsize,):  # sized by the whole population in a part (or on one of several processes)
                fix += f"; size inputs by pop.size ({pop.size}, {whole}), not pop.popsize ({pop.popsize}, all members)"
            raise UsageError("--fitness", f"{what} shape {tuple(f.shape)} for {held}", fix)
        bad = (~torch.isfinite(f.double())).nonzero().flatten().tolist()
        if bad:
            shown = ", ".join(f"member {pop.members[i]}: {f[i].item()}" for i in bad[:3])
            raise UsageError(
                "--fitness",
                f"{what} {len(bad)} non-finite value(s) ({shown})",
                f"clip or penalize instead of returning nan/inf; {INFEASIBLE_FIX}",
            )
        return f


def global_seed(seed: int, generation: int, stream: str = "fitness") -> int:
    """The seed of the global generators while a plugged-in fitness (or ``stream`` "evaluate", the evaluation) runs in
    ``generation`` of a run seeded ``seed``."""
    digest = hashlib.blake2b(f"flipes/train/{seed}/{generation}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """torch's, NumPy's and Python's global generators seeded from ``seed`` inside, as they were after.

    A fitness that draws from them (``torch.randint`` for a minibatch, a shuffling ``DataLoader``, ``np.random``,
    dropout) would otherwise draw from a process's own random state: another minibatch on every MPI rank and in
    every run of the same seed. Seeded per generation, every rank and every part of a population draws the same
    numbers, and a resume draws those of the run it continues."""
    np_state, py_state = np.random.get_state(), random.getstate()
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        _seed_torch(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)`` where an accelerator is available; else the CPU generator's seed alone, the one
    generator that can draw there, as torch seeds it. Without an accelerator ``torch.manual_seed`` still queues a lazy
    seed for CUDA, XPU and MTIA, each with a formatted stack trace: ~0.1-0.2 ms, twice in every generation of a
    plugged-in fitness. torch < 2.6 (no ``torch.accelerator``): ``torch.manual_seed``; so too with a registered
    PrivateUse1 backend, which ``torch.accelerator`` names before an available CUDA (and, without a ``torch.<name>``
    module, ``is_available()`` raises on)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None:
        torch.manual_seed(seed)
        return
    device = accelerator.current_accelerator()  # the one accelerator built in (a PrivateUse1 one first), or None
    if device is None or (device.type in ("cuda", "mps", "xpu", "mtia") and not accelerator.is_available()):
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Evaluator:
    """The center policy's mean return over ``episodes`` fresh episodes (rank 0's own env)."""

    env: gym.vector.VectorEnv
    seed: int
    max_steps: int | None = None

    def __call__(self, model: nn.Module, generation: int) -> dict[str, float]:
        obs = reset_episodes(self.env, self.seed, "eval", generation)
        with seeded_global_rngs(global_seed(self.seed, generation, "evaluate")):  # a policy that samples its actions
            episodes = run_episodes(self.env, model, obs=obs, max_steps=self.max_steps)
        returns = episodes.returns
        std = returns.std() if len(returns) > 1 else torch.zeros((), dtype=returns.dtype, device=returns.device)
        mean, std = torch.stack((returns.mean(), std)).tolist()  # one copy to the host
        return {"eval_return": mean, "eval_std": std, "eval_steps": episodes.steps}


@dataclass
class UserEvaluator:
    """``evaluate(model)`` given with (or found beside) a custom fitness: a number, the ``eval_return``,
    or a dict of numbers with an ``eval_return`` among them, the others logged beside it (accuracy, loss)."""

    fn: Callable[[nn.Module], Any]
    beside: bool = False  # found beside a --fitness module (errors name that option), not given as evaluate=
    env: None = None
    seed: int = 0  # the run's: with the generation, it seeds the global generators an evaluate() may draw from

    def __call__(self, model: nn.Module, generation: int) -> dict[str, float]:
        # as the fitness and the env evaluation run: no graph, no requires_grad warning; a random validation batch
        # drawn from the global generators is the same in every run of the seed (best.pt and --target judge by it)
        with torch.no_grad(), seeded_global_rngs(global_seed(self.seed, generation, "evaluate")):
            value = self.fn(model)
        fix = 'return one finite number, or a dict of numbers with an "eval_return" (best.pt and --target use it)'
        option, it = ("--fitness", "evaluate() beside it ") if self.beside else ("evaluate", "")
        if isinstance(value, Mapping):
            if "eval_return" not in value:
                raise UsageError(option, f"{it}returned a dict without an eval_return (keys {sorted(map(str, value))})", fix)
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise UsageError(option, f"{it}returned a dict with keys that are not strings: {bad[:3]}", fix)
            out = {k: _number(value[k], option, f"{it}returned {k!r} as", fix) for k in value}
        else:
            out = {"eval_return": _number(value, option, f"{it}returned", fix)}
        if not math.isfinite(out["eval_return"]):
            raise UsageError(option, f"{it}returned eval_return {out['eval_return']}", fix)
        return out


def _number(value: Any, option: str, what: str, fix: str) -> float:
    """``value`` as a float: a Python or numpy number, or a one-element tensor or array (not a bool)."""
    if (isinstance(value, Tensor) and value.numel() == 1) or (isinstance(value, np.ndarray) and value.size == 1):
        value = value.item()
    if not isinstance(value, int | float | np.number) or isinstance(value, bool | np.bool_):
        raise UsageError(option, f"{what} {type(value).__name__} {_short(value)}", fix)
    return float(value)


def build_evaluator(
    config: TrainConfig, device: str, comm: dist.Comm, env: gym.vector.VectorEnv | None, plugins: Plugins | None = None
) -> Callable[..., dict] | None:
    """Rank 0's evaluation of the center policy: ``--eval-episodes`` episodes on its own vector env,
    or the ``evaluate`` function beside a ``--fitness`` (or given with it); None where there is none."""
    if comm.rank != 0:
        return None
    if config.fitness:
        fn = (plugins or Plugins()).evaluate_fn(config.fitness)
        return None if fn is None else UserEvaluator(fn, plugins is None or plugins.evaluate is None, seed=config.seed)
    if env is None:
        return None
    threads = min(config.env_threads or available_cores(comm.local_size), config.eval_episodes)
    env = make_vector_env(config.env, config.eval_episodes, device, threads=threads, note=None, **config.env_kwargs)
    return Evaluator(env, config.seed, config.max_episode_steps or None)


def standard_callbacks(config: TrainConfig, run_dir: Path) -> list[Callback]:
    """The sinks a config asks for: JSONL and checkpoints always; a progress line, TensorBoard (when
    installed), W&B and curves.png as configured."""
    out: list[Callback] = [JSONLLogger(run_dir / "metrics.jsonl"), Checkpointer(run_dir, config.checkpoint_every)]
    if config.tensorboard:
        try:
            out.append(TensorBoardLogger(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional: on when it is there
            pass
    if config.wandb:
        try:
            out.append(WandbLogger(config.wandb_project))
        except ImportError:
            raise UsageError("--wandb", "needs the wandb package", "pip install 'flipes[wandb]', or leave --wandb off") from None
    out.append(ProgressPrinter() if config.progress else OutcomePrinter())  # how the run ended: said either way
    if config.plot:
        out.append(CurvePlotter(run_dir / "curves.png", "generation" if config.fitness else "timesteps"))
    return out
