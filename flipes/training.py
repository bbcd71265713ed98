"""Training as a library function: ``flipes.train(config, callbacks=...)``, the loop of ``flipes train``.

The loop is Salimans et al.'s ES (2017, arXiv:1703.03864) over FlipES's Flipout population (Wen et
al., ICLR 2018, arXiv:1803.04386), built from small steps: what the config builds
(:mod:`flipes.builders`), a resumed run's state (:mod:`flipes.resume`), :func:`evaluate_center`,
:func:`stop_reason`. Rows go to callbacks (``flipes.callbacks``); under MPI every rank runs the loop
on its block of groups and rank 0 alone evaluates and runs the callbacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import json
import math
import numbers
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from flipes import dist
from flipes.builders import (
    Fitness,
    build_env,
    build_es,
    build_evaluator,
    build_fitness,
    build_model,
    global_seed,
    image_note,
    import_plugins,
    seeded_global_rngs,
    standard_callbacks,
)
from flipes.callbacks import Callback, Checkpointer, PlainRow
from flipes.checkpoint import tensors_sha256
from flipes.config import TrainConfig, resolve_groups, resolve_target, resume_dir, validate
from flipes.errors import EqualFitnessWarning, UsageError, WorkerEndedError, caller_stacklevel
from flipes.es import FlipES
from flipes.es.optimizer import optimizer_settings
from flipes.nn import flipout
from flipes.nn.convert import training_dropout
from flipes.plugins import NAMED, Plugins
from flipes.resume import agree, restore
from flipes.rl import EnvPoolVectorEnv, RolloutFitness
from flipes.rl.envs import base_id, print_note
from flipes.rundir import check_not_in_use, check_run_dir, prepare_run_dir


@dataclass
class TrainState:
    """What the loop holds, as callbacks see it."""

    config: TrainConfig
    model: nn.Module
    es: FlipES
    comm: dist.Comm
    run_dir: Path
    target: float | None
    resumed: bool = False
    best: float = -math.inf  # best eval_return so far
    seconds: float = 0.0  # wall time of training, over resumes
    timesteps: int = 0  # env steps of all ranks, over resumes
    metrics: list[dict[str, Any]] = field(default_factory=list)  # rows of this call
    callbacks: list[Callback] = field(default_factory=list)  # the user's, whose state_dict() is saved
    saved_callbacks: dict[str, Any] = field(default_factory=dict)  # their states in the resumed checkpoint
    asked_generations: int | None = None  # a resume's --generations below the run's own, which is kept

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``checkpoint.pt`` holds: the ES state (model, optimizer, generation), the run's counters
        and the user's callbacks' states."""
        saved = {}
        for key, cb in callback_keys(self.callbacks):
            value = cb.state_dict()
            if value is not None:
                check_saveable(value, f"{key}.state_dict()")
                saved[key] = value
        return {
            "es": self.es.state_dict(),
            "timesteps": self.timesteps,
            "seconds": self.seconds,
            "best": self.best,
            "config": dataclasses.asdict(self.config),
            **({"callbacks": saved} if saved else {}),
        }


def callback_keys(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Each callback's key in a checkpoint: its position and class, ``"0:HallOfFame"``."""
    return [(f"{i}:{type(cb).__qualname__}", cb) for i, cb in enumerate(callbacks)]


def check_saveable(value: Any, where: str) -> None:
    """Raise a UsageError for what a checkpoint cannot hold (it loads with ``weights_only``)."""
    if isinstance(value, Tensor | int | float | bool | str | type(None)):
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_saveable(item, where)
        return
    if isinstance(value, dict) and all(isinstance(k, str | int) for k in value):
        for item in value.values():
            check_saveable(item, where)
        return
    raise UsageError(
        "callbacks",
        f"{where} holds a {type(value).__name__}, which a checkpoint cannot hold",
        "return tensors, numbers, strings, None, and lists, tuples and dicts of them (e.g. torch.as_tensor(array))",
    )


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (outside a population it is the mean network).
        es: the FlipES (its ``state_dict`` continues the run).
        metrics: the rows of this call, one per generation, as written to ``metrics.jsonl``.
        run_dir: the run directory.
        reason: why training ended: ``generations``, ``solved: ...``, ``timestep budget reached: ...``
            (``max_timesteps``), ``stopped after ...`` (``max_seconds``), ``nothing trained: ...`` (a resume past its
            budget),
            ``stopped by a callback`` or ``interrupted`` (Ctrl-C/SIGTERM; the command exits 130).
        config: the options the run used.
        best: the best ``eval_return`` of the run (over resumes), None where nothing was evaluated.
    """

    model: nn.Module
    es: FlipES
    metrics: list[dict[str, Any]]
    run_dir: Path
    reason: str
    config: TrainConfig
    best: float | None = None

    @property
    def eval_return(self) -> float | None:
        """The last evaluation's ``eval_return`` in this call's rows (None where there was none)."""
        return next((row["eval_return"] for row in reversed(self.metrics) if "eval_return" in row), None)


class Interrupted(KeyboardInterrupt):
    """Training stopped at once by a second Ctrl-C or SIGTERM; ``why`` names it, ``kept`` says what the run keeps
    (the command line prints both in one line and exits 130)."""

    def __init__(self, why: str, kept: str) -> None:
        self.why, self.kept = why, kept
        super().__init__(f"{why}; {kept}")


# a SIGTERM again within this many seconds of the first is the same request: a batch system signals every process of
# a job, and a launcher (mpiexec, srun) forwards its own SIGTERM to the ranks as well
REPEAT_SECONDS = 2.0


class StopRequest:
    """Inside ``with StopRequest() as stop``, Ctrl-C / SIGTERM ask the loop to stop after the current generation
    (and checkpoint), said at once in one line where ``say``; a second one stops at once: it raises
    :class:`Interrupted` (a KeyboardInterrupt) naming it and ``kept()``, what the run keeps, so that a generation that
    never ends (a hung env, a fitness stuck in a loop) cannot make a process ignore every later SIGTERM. A SIGTERM
    within ``REPEAT_SECONDS`` of the first one is a copy of it, not a second one. The handlers that were installed
    before are restored on exit. Off the main thread (where Python allows no signal handlers) it does nothing.

    While ``setting_up`` says what a stop keeps (envs and the model being built, before the run directory is
    written), the first signal stops at once too: there is nothing of the run to keep yet, and a model may take
    minutes to load. Once it is cleared (as the MPI ranks meet, before rank 0 writes the run directory), a signal waits
    for the directory to be whole, and the loop stops before its first generation (:func:`run_loop`)."""

    def __init__(
        self, say: bool = True, last: Callable[[], str] = lambda: "the last checkpoint", resume: str = "", setting_up: str = ""
    ) -> None:
        self.requested = False
        self.say, self.last, self.resume, self.setting_up = say, last, resume, setting_up
        self.running = False  # a generation may be under way (the loop has started)
        self._holding, self._held = False, ""  # a note kept back (holding_note) until it is known to hold
        self._first: tuple[int, float] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        now = time.monotonic()
        if self._first is not None:
            if self._first[0] == signum == signal.SIGTERM and now - self._first[1] < REPEAT_SECONDS:
                return
            raise Interrupted(f"a second {name}", self.kept())
        self._first, self.requested = (signum, now), True
        if self.setting_up:
            raise Interrupted(f"{name} while the run was set up", self.setting_up)
        if self.say:
            when = "after the generation under way, with a checkpoint" if self.running else "before the first generation"
            text = f"flipes: {name}: stopping {when}; another Ctrl-C or SIGTERM stops at once, keeping {self.last()}"
            if self._holding:
                self._held = text
                return
            self._say(text)

    @contextlib.contextmanager
    def holding_note(self) -> Iterator[None]:
        """Inside, a first signal's note is kept back, and said on leaving normally: the ranks are agreeing, and another
        rank still setting up may end the job at once, with its own line, instead."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._held:
            self._say(self._held)
            self._held = ""

    @staticmethod
    def _say(text: str) -> None:
        try:  # sys.stderr: a notebook's too
            print(text, file=sys.stderr, flush=True)
        except (RuntimeError, OSError, ValueError):  # this handler cut into the main thread's own write to it
            with contextlib.suppress(OSError):
                os.write(2, (text + "\n").encode(errors="replace"))

    def kept(self) -> str:
        """What a run stopped at once keeps: its last checkpoint, and the way on from it."""
        return f"{self.last()} stays" + (f": --resume {self.resume} continues from it" if self.resume else "")


def _step_options(config: TrainConfig, first: str, second: str) -> str:
    """The options whose size can make a generation's parameters or returns overflow: adapted σ's rate (--sigma-lr)
    among them where it is on (a large one overflows log σ within a generation or two)."""
    return f"{first}, {second} or --sigma-lr" if config.sigma_lr > 0 else f"{first} or {second}"


def train(
    config: TrainConfig | None = None,
    *,
    comm: dist.Comm | str | None = None,
    callbacks: Iterable[Callback] = (),
    **overrides: Any,
) -> TrainResult:
    """Train with FlipES: a policy on an env, or any model on a custom fitness.

    Args:
        config: the options; ``None``: :meth:`TrainConfig.for_env` of ``overrides`` (the env's
            per-env defaults under them).
        comm: communicator between processes; default: ``flipes.dist.world()`` (MPI under mpiexec).
            A string is the option ``comm`` (``"allreduce"`` or ``"seeds"``), as ``--comm`` is.
        callbacks: called on rank 0 beside the standard ones (JSONL, checkpoints, progress line,
            TensorBoard and W&B as the config asks): ``on_generation`` before them, so what a
            callback adds to the row reaches every sink; ``on_train_start``/``on_train_end`` after.
        **overrides: options replacing those of ``config`` (checked strictly: ``generations=3.7``
            is an error). ``fitness=``, ``model=``, ``evaluate=``, ``optimizer=`` and ``shaping=`` also
            take Python objects: a function ``fitness(model, pop) -> Tensor``, a function
            ``model(env) -> nn.Module`` or a module, a function ``evaluate(model) -> float`` (or a dict of
            numbers with an ``eval_return``; only with
            such a fitness), a function ``optimizer(params) -> torch.optim.Optimizer`` or a
            ``torch.optim`` class (built at ``lr``), a function ``shaping(fitness) -> weights``. The run
            records their ``module:qualname``; give them again to resume it. ``sigma=`` also takes a
            :class:`flipes.search.SigmaDecay` (read as ``sigma``, ``sigma_decay``, ``sigma_min``), not another
            function of the generation (see :func:`_sigma_schedule`).

    Returns:
        :class:`TrainResult`.

    Raises:
        UsageError: a mistake in the options, env id, plug-ins or run directory (the command line
            prints it as one line). Exceptions raised by user code propagate unchanged.
        StorageError: a file of the run cannot be written (a full disk); it names the last good checkpoint.
        WorkerEndedError: an env worker process died (the out-of-memory killer); it names the worker and
            the last checkpoint (an env raising in a worker: EnvWorkerError, its traceback as the cause).
        Interrupted: a second Ctrl-C or SIGTERM (a KeyboardInterrupt) stopped training at once; the first one
            returns with ``reason`` ``interrupted`` after the generation under way (before the first one where it came
            while the run directory was written), or raises this at once while envs and the model are built.

    Examples::

        >>> result = flipes.train(env="flipes/CartPole-v1", seed=0, out="runs/cp")
        >>> result.eval_return, result.reason
        >>> flipes.train(env="none", model=make_model, fitness=my_fitness, out="runs/mine")
    """
    if isinstance(comm, str):  # train(comm="seeds"): the option of that name, not a communicator
        overrides, comm = {**overrides, "comm": comm}, None
    if comm is not None:
        dist.check_comm(comm, "flipes.train(comm=...)")
    if config is not None and not isinstance(config, TrainConfig):  # a dict, a file name, a sketch's `...`
        what = "Ellipsis (...)" if config is Ellipsis else f"a {type(config).__name__}"
        fix = "pass options as keywords, flipes.train(env=..., popsize=...), or a flipes.TrainConfig"
        raise UsageError("config", f"is {what}, not a flipes.TrainConfig", fix)
    if config is not None:  # TrainConfig(fitness=fn): objects in a config are taken like those given here
        objects = {k: getattr(config, k) for k in NAMED if not isinstance(getattr(config, k), str)}
        config = dataclasses.replace(config, **dict.fromkeys(objects, ""))
        overrides = {**objects, **overrides}
    overrides, config = _sigma_schedule(overrides, config)
    env = overrides.get("env", config.env if config is not None else "")  # given here or in a TrainConfig
    if isinstance(env, type | gym.Env | gym.vector.VectorEnv) or callable(env):  # the run records an id it can make again
        what = f"the class {env.__name__}" if isinstance(env, type) else f"a {type(env).__name__}"
        fix = (
            "register it in a module of yours, gymnasium.register('mine/Name-v0', entry_point=... or vector_entry_point=...), "
            "and pass env='module:mine/Name-v0'; or roll a vector env out yourself: env='none', "
            "fitness=flipes.rl.RolloutFitness(vector_env, episodes)"
        )
        raise UsageError("env", f"is {what}, not an env id", fix)
    if isinstance(callbacks, Callback | type) or not isinstance(callbacks, Iterable):  # one given bare: list() would say little
        name = callbacks.__name__ if isinstance(callbacks, type) else type(callbacks).__name__
        what, fix = (
            ("the class", f"callbacks=[{name}()]")
            if isinstance(callbacks, type)
            else ("a" + "n" * (name[0] in "AEIOUaeiou"), "callbacks=[callback]")
        )
        raise UsageError("callbacks", f"is {what} {name}, not a list of callbacks", f"pass a list, {fix}")
    callbacks = list(callbacks)
    for cb in callbacks:  # here, not at the first generation's hook
        if isinstance(cb, type) or not isinstance(cb, Callback):
            name = cb.__name__ if isinstance(cb, type) else type(cb).__name__
            fix = f"pass an instance, callbacks=[{name}()]" if isinstance(cb, type) else "subclass flipes.callbacks.Callback"
            raise UsageError("callbacks", f"{name} is {'a class' if isinstance(cb, type) else 'not a Callback'}", fix)
        check_hooks(cb)
    plugins = Plugins.take(overrides)
    config = TrainConfig.for_env(**overrides) if config is None else config.replace(**overrides)
    plugins.check(config.fitness)
    comm = comm if comm is not None else dist.world(config.mpi_timeout)  # its startup is bounded by it too
    validate(config, comm.size)
    config, groups_note = resolve_groups(config, comm.size)  # the number the run records
    config = config.resolve_auto_resume()
    threads_before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, comm, callbacks, plugins, [groups_note] if groups_note else [])
    finally:
        torch.set_num_threads(threads_before)  # the caller's process as it was


def _sigma_schedule(overrides: dict[str, Any], config: TrainConfig | None) -> tuple[dict[str, Any], TrainConfig | None]:
    """``sigma=SigmaDecay(s, d, m)`` (given here or in a TrainConfig) as the options ``sigma=s, sigma_decay=d,
    sigma_min=m``. Any other function of the generation is refused: a run records its options as numbers and
    names, a resume and every MPI rank compare them, and a function's name says nothing of its values (every
    lambda is ``<lambda>``); σ is also a number that other options are read against (ARS's step lr·σ,
    ``sigma_min``). The decay with its floor covers evosax's and OpenAI's schedules; another one runs as
    ``FlipES(sigma=fn)`` in a loop of one's own."""
    from flipes.plugins import name_of
    from flipes.search import SigmaDecay

    sigma = overrides.get("sigma", config.sigma if config is not None else None)
    if isinstance(sigma, SigmaDecay):
        # a SigmaDecay in the config meets that config's options and those given here, which would replace them
        in_config = {} if "sigma" in overrides else {k: getattr(config, k) for k in ("sigma_decay", "sigma_min")}
        beside = {**in_config, **overrides}
        given = [k for k, default in (("sigma_decay", 1.0), ("sigma_min", 0.0)) if beside.get(k, default) != default]
        if given:
            raise UsageError("sigma", f"a SigmaDecay with {' and '.join(given)} beside it", "give the schedule one way")
        return {**overrides, "sigma": sigma.sigma, "sigma_decay": sigma.decay, "sigma_min": sigma.min}, config
    if callable(sigma):
        raise UsageError(
            "sigma",
            f"is a function ({name_of(sigma)}), and a run takes σ as a number, whose schedule it records",
            "pass sigma_decay=d and sigma_min=m for max(σ·d^g, m), or step FlipES(model, sigma=fn) in a loop of your own",
        )
    return overrides, config


def _train(config: TrainConfig, comm: dist.Comm, callbacks: list[Callback], plugins: Plugins, notes: list[str]) -> TrainResult:
    if isinstance(comm, dist.MPIComm):
        comm.start_watchdog(config.mpi_timeout)  # from the first exchange on: a stopped rank cannot hang the job
    try:
        return _train_watched(config, comm, callbacks, plugins, notes)
    except SystemExit as e:  # sys.exit in a fitness or callback on one rank: the others must not wait for it
        if comm.size > 1:
            dist.abort_on_exit(comm, e)
        raise
    finally:
        if isinstance(comm, dist.MPIComm):
            comm.start_watchdog(0)


def _train_watched(
    config: TrainConfig, comm: dist.Comm, callbacks: list[Callback], plugins: Plugins, notes: list[str]
) -> TrainResult:
    lead = comm.rank == 0
    device = config.device
    if device == "cuda" and comm.size > 1:  # rank -> a GPU of its node, shared if too few
        device = f"cuda:{comm.local_rank % torch.cuda.device_count()}"
    if torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))  # no stray context on GPU 0 from code that says only "cuda"
    run_dir = config.run_dir()
    in_place = bool(config.resume) and resume_dir(config.resume).resolve() == run_dir.resolve()
    # a signal while envs and the model are built stops at once (it raises Interrupted): nothing is written before
    untouched = f"{run_dir} is as it was: --resume {config.resume} continues it" if in_place else \
                f"nothing was written to {run_dir}: the same command starts the run"  # fmt: skip
    with StopRequest(say=lead, resume=str(run_dir), setting_up=untouched) as stop:
        return _set_up_and_run(config, comm, callbacks, plugins, notes, device, run_dir, stop)


def on_rank_0(comm: dist.Comm, check: Callable[[], None]) -> None:
    """Run ``check`` on rank 0 and raise its error on every rank: rank 0 alone failing would leave the others waiting
    for it in the next collective until ``--mpi-timeout`` (a script that catches the error goes on on every rank alike).
    The others raise rank 0's UsageError as it is, another error as a RuntimeError naming it; rank 0 its own."""
    error: Exception | None = None
    if comm.rank == 0:
        try:
            check()
        except Exception as e:
            if comm.size == 1:
                raise
            error = e
    if comm.size == 1:
        return
    # a UsageError pickles badly (its message alone comes back as the option): its parts travel
    shared = comm.bcast(
        None if error is None else
        (error.option, error.problem, error.fix) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
    )  # fmt: skip
    if error is not None:
        raise error
    if isinstance(shared, tuple):
        raise UsageError(*shared)
    if shared is not None:
        raise RuntimeError(f"rank 0 failed while the run was set up ({shared}); its own lines say more")


def _set_up_and_run(
    config: TrainConfig,
    comm: dist.Comm,
    callbacks: list[Callback],
    plugins: Plugins,
    notes: list[str],
    device: str,
    run_dir: Path,
    stop: StopRequest,
) -> TrainResult:
    lead = comm.rank == 0
    # checks of rank 0 alone end every rank alike; their conditions are inside, as --resume and --wandb may differ by rank

    def not_in_use() -> None:  # a run its process is still writing is "in use", not a run of other options
        if config.resume:
            check_not_in_use(resume_dir(config.resume))

    def wandb_installed() -> None:
        if config.wandb and importlib.util.find_spec("wandb") is None:
            raise UsageError("--wandb", "needs the wandb package", "pip install 'flipes[wandb]', or leave --wandb off")

    on_rank_0(comm, not_in_use)
    # what must be fixed whatever the run directory holds is named before it: the code named, the packages, the env
    import_plugins(config, plugins)
    on_rank_0(comm, wandb_installed)
    notes = list(notes)  # said once everything is built: a mistake found while building stays one line

    with contextlib.ExitStack() as cleanup:  # envs and the lock are let go however this ends (a failed check too)
        env = build_env(config, comm, device, notes.append)
        cleanup.callback(_close, env)
        if note := image_note(config, env):
            notes.append(note)
        # before the model is built (a --model may load for minutes) and anything is written
        on_rank_0(comm, lambda: check_run_dir(run_dir, config))
        with torch.random.fork_rng(devices=[]):  # the initial parameters: a function of the seed alone
            torch.manual_seed(config.seed)
            model = build_model(config, env, plugins)
            try:
                model = flipout(model).to(device)
            except ValueError as e:
                raise UsageError("--model", str(e)) from None
        es = build_es(config, model, comm, plugins)
        if note := own_lr_note(config, es.optimizer):
            notes.append(note)
        dropout = training_dropout(model)
        es._told_dropout = True  # this note, not FlipES's warning, says it here
        es._train_fitness = True  # the user wrote a fitness, not the population block: the warnings speak of it
        # notes of what may not be meant: without the progress lines still said, as warnings (a sweep's runs are quiet)
        cautions: list[str] = []
        if dropout:  # the evaluation turns it off; the fitness runs the model as it is
            cautions.append(
                f"{config.model or 'the model'} has dropout in training mode ({', '.join(dropout[:3])}"
                f"{', ...' if len(dropout) > 3 else ''}): it adds noise of its own to every member's fitness; "
                "return model.eval() from the model function unless that is meant"
            )
        fitness = build_fitness(config, env, model, plugins)
        evaluator = build_evaluator(config, device, comm, env, plugins)
        cleanup.callback(_close, getattr(evaluator, "env", None))
        state = TrainState(config, model, es, comm, run_dir, resolve_target(config))
        if config.resume:
            notes.extend(restore(state, config.resume, device, fitness))
            # EnvPool's streams are fast-forwarded by resets alone: not a replay of an env that draws in its steps
            if es.generation > 0 and isinstance(env, EnvPoolVectorEnv) and (what := env.step_draws()):
                cautions.append(
                    f"resumed on EnvPool's {env.env_id} ({what}), which draws random numbers in its steps: EnvPool "
                    "fast-forwards each env's episodes by resets alone, so the run now plays other episodes than one never "
                    f"stopped; --env gymnasium:{base_id(config.env)} reseeds every generation and resumes bit for bit"
                )
            unchecked = [f"{k} {getattr(config, k)}" for k in NAMED if "<lambda>" in getattr(config, k)]
            # recorded as module:<lambda>: any lambda of that script has the same name. A note, not a caution: lambdas
            # are fine (the README's examples pass them), only unchecked
            if unchecked:
                notes.append(
                    f"resumed with {', '.join(unchecked)}: one lambda cannot be told from another, so the resume cannot "
                    "check that it is the code the run was trained with (a named function can be checked)"
                )
            if es.generation > config.generations:  # a total, not "more": the run keeps its own on disk
                state.asked_generations = config.generations
                config = state.config = config.replace(generations=es.generation)
        # from here a signal waits for the run directory to be whole. Cleared before the ranks agree: rank 0 writes once
        # every rank has entered agree(), so no rank still stops at once (leaving the job) while rank 0 writes; rank 0's
        # note waits for agree() too, as a rank still setting up may yet end the job at once with its own line
        with stop.holding_note():
            stop.setting_up = ""
            if comm.size > 1:
                agree(comm, config, state)  # before anything is written
        if lead:
            # the user's callbacks take their saved states only below: a branch's first checkpoint copies them as saved
            start = state.checkpoint_state() | ({"callbacks": state.saved_callbacks} if state.saved_callbacks else {})
            cleanup.callback(prepare_run_dir(run_dir, config, start).release)
        standard = standard_callbacks(config, run_dir) if lead else []  # TensorBoard writes: after the lock
        for sink in standard:  # files closed however this ends (an exception skips on_train_end), before the lock goes
            if callable(close := getattr(sink, "close", None)):
                cleanup.callback(close)
        users = callbacks if lead else []
        state.callbacks = users
        keys = callback_keys(users)
        for key, cb in keys:  # a resumed run's callbacks take their saved state back
            if key in state.saved_callbacks:
                cb.load_state_dict(state.saved_callbacks[key])
        unclaimed = sorted(set(state.saved_callbacks) - {key for key, _ in keys}) if lead else []
        if unclaimed:  # said, not refused: a resume may drop a callback on purpose
            cautions.append(
                f"the checkpoint holds the state of callback(s) {', '.join(unclaimed)} (position:class), which no callback "
                f"of this call takes ({', '.join(k for k, _ in keys) or 'none given'}): it is not restored, and the next "
                "checkpoint drops it; pass the same callbacks in the same order to keep it"
            )
        for text in notes if lead and config.progress else []:
            print_note(text)
        for text in cautions if lead else []:
            if config.progress:
                print_note(text)
            else:
                warnings.warn(f"flipes.train: {text}", UserWarning, stacklevel=caller_stacklevel())
        checkpointer = next((cb for cb in standard if isinstance(cb, Checkpointer)), None)

        def last() -> str:  # rank 0's checkpoints (the other ranks write none)
            at = checkpointer.saved_at if checkpointer is not None else -1
            return f"the last checkpoint (generation {at})" if at >= 0 else "the last checkpoint"

        stop.last = last  # a first signal waits until the final checkpoint is written, too
        for cb in standard + users:  # the run directory is complete when the user's callbacks start
            cb.on_train_start(state)
        if comm.size > 1:  # what a user's on_train_start set in the optimizer (a warm-up lr): on every rank
            set_optimizer_settings(es.optimizer, comm.bcast(optimizer_settings(es.optimizer)))
        # what the user's callbacks add to a row reaches the sinks, as plain JSON values
        reason = run_loop(state, fitness, evaluator, [*users, PlainRow(), *standard], stop)
        for cb in standard + users:
            cb.on_train_end(state, reason)
    if comm.size > 1:  # every rank returns once rank 0 has written the run directory: the script may read it next
        comm.bcast(None)
    best = state.best if math.isfinite(state.best) else None
    return TrainResult(model, es, state.metrics, run_dir, reason, config, best)


def _close(env: gym.vector.VectorEnv | None) -> None:
    if env is not None:
        env.close()


def evaluate_center(state: TrainState, evaluator: Callable[..., dict] | None, generation: int) -> dict[str, float]:
    """The center policy's evaluation at ``generation``, on rank 0 (empty where there is none), in eval
    mode as ``load_policy`` gives it (no dropout): ``best.pt`` and ``--target`` judge the model that is
    deployed. A BatchNorm whose running statistics were never updated (a population leaves them alone)
    normalizes by the evaluation's batch statistics instead, as in training, without updating them: in
    eval mode it would normalize by its initial ones. Each module's mode is set back afterwards (the
    fitness runs in the model's own)."""
    if evaluator is None:
        return {}
    t0 = time.perf_counter()
    modes = [(m, m.training) for m in state.model.modules()]
    unfilled = [m for m, _ in modes if _unfilled_batch_norm(m)]
    for module, _ in modes:
        module.training = module in unfilled
    for module in unfilled:  # batch statistics, running ones left as they are
        module.track_running_stats = False
    try:
        result = evaluator(state.model, generation)
    finally:
        for module in unfilled:
            module.track_running_stats = True
        for module, training in modes:
            module.training = training
    return {**result, "eval_seconds": time.perf_counter() - t0}


def _unfilled_batch_norm(module: torch.nn.Module) -> bool:
    """A BatchNorm (or InstanceNorm) tracking running statistics that were never updated."""
    tracked = getattr(module, "num_batches_tracked", None)
    return isinstance(module, torch.nn.modules.batchnorm._NormBase) and tracked is not None and int(tracked) == 0


# why ranks may part in flipes.train although every rank runs the same script
CALLBACKS_RANK_0 = (
    "; callbacks run on rank 0 alone: one that changes the model or the FlipES (other than the optimizer's settings, "
    "such as an lr, which reach every rank) changes rank 0's alone"
)


# how flipes.train calls a callback's methods: the arguments after self, as a Callback defines them
HOOKS = {
    "on_train_start": ("state",),
    "on_generation": ("state", "row"),
    "on_train_end": ("state", "reason"),
    "state_dict": (),
    "load_state_dict": ("state",),
}


# hooks of other libraries (Keras, Lightning) and near misses of flipes' own, which flipes would never call: the hook
# that runs at that point
OTHER_HOOKS = {
    "on_train_begin": "on_train_start",
    "on_fit_start": "on_train_start",
    "on_start": "on_train_start",
    "on_fit_end": "on_train_end",
    "on_end": "on_train_end",
    "on_epoch_end": "on_generation",
    "on_train_epoch_end": "on_generation",
    "on_batch_end": "on_generation",
    "on_train_batch_end": "on_generation",
    "on_validation_end": "on_generation",
    "on_generation_end": "on_generation",
    "on_generations": "on_generation",
    "on_step": "on_generation",
    "on_step_end": "on_generation",
    "on_iteration": "on_generation",
    "on_iteration_end": "on_generation",
}


def check_hooks(cb: Callback) -> None:
    """Raise a UsageError where a callback overrides a hook with a signature flipes cannot call (Keras' and
    Lightning's habits: ``on_generation(self, row)``), or defines another library's hook that flipes never calls
    (Keras' ``on_epoch_end``, ``on_train_begin``), before training rather than at the first generation."""
    for klass in type(cb).__mro__:
        if klass is Callback:
            break
        for name in vars(klass):
            if name in OTHER_HOOKS:
                hook = OTHER_HOOKS[name]
                raise UsageError(
                    "callbacks",
                    f"{type(cb).__name__}.{name} is no hook of flipes.train, which would never call it",
                    f"define it as def {hook}({', '.join(('self', *HOOKS[hook]))}) (flipes' hooks: "
                    "on_train_start(state), on_generation(state, row) after each generation, on_train_end(state, reason))",
                )
    for hook, args in HOOKS.items():
        method = getattr(cb, hook)
        if getattr(type(cb), hook, None) is getattr(Callback, hook):
            continue
        try:
            inspect.signature(method).bind(*args)
        except TypeError as e:
            raise UsageError(
                "callbacks",
                f"{type(cb).__name__}.{hook} takes other arguments ({e}); flipes calls {hook}({', '.join(args)})",
                f"define it as def {hook}({', '.join(('self', *args))})",
            ) from None
        except ValueError:  # no signature to read (a builtin): the call will say
            continue


def rank_difference_hint(model: nn.Module) -> Callable[[list[str]], str]:
    """The likely cause of ranks whose models differ in the state dict entries named: buffers that the forward
    updated from each rank's own members (a running normalizer of one's own), else a callback of rank 0."""
    buffers = {name for name, _ in model.named_buffers()}

    def hint(differ: list[str]) -> str:
        if differ and all(name in buffers for name in differ):
            return (
                f"; {', '.join(differ[:5])} {'is a buffer' if len(differ) == 1 else 'are buffers'} that the forward "
                "changed by each rank's own members' inputs (a running mean of one's own): update it outside the "
                "population from data alike on every rank, or, for observations, hold a flipes.rl.RunningNorm as the "
                "model's obs_norm: flipes' rollouts record it and merge it across the ranks"
            )
        return CALLBACKS_RANK_0

    return hint


# row entries each rank measures for itself; rank 0 sends the others
RANK_ROW = ("steps_per_second", "bytes_sent")


def own_lr_note(config: TrainConfig, optimizer: torch.optim.Optimizer) -> str:
    """What ``--optimizer FN`` steps at where it is not ``--lr``: the function builds its optimizer with its own settings,
    so ``--lr`` (given or the default) is not used; empty where they agree or no ``--optimizer`` is given."""
    steps = sorted({float(g["lr"]) for g in optimizer.param_groups if "lr" in g})
    if not config.optimizer or steps == [config.lr]:
        return ""
    at = f"at lr {', '.join(f'{x:g}' for x in steps)}" if steps else "with no lr"
    return (
        f"--optimizer {config.optimizer} builds {type(optimizer).__name__} {at}, its own: --lr {config.lr:g} is not used "
        "(a torch.optim class, such as torch.optim.sgd:SGD, is built at --lr)"
    )


def set_optimizer_settings(optimizer: torch.optim.Optimizer, settings: list[dict[str, Any]]) -> None:
    """Give ``optimizer`` rank 0's :func:`optimizer_settings`: callbacks run on rank 0 alone, so an lr schedule
    of one would otherwise step rank 0's parameters alone (a tensor setting is written in place, as torch holds it)."""
    for group, saved in zip(optimizer.param_groups, settings, strict=True):
        for key, value in saved.items():
            if isinstance(group.get(key), Tensor) and isinstance(value, Tensor):
                group[key].copy_(value)
            else:
                group[key] = value


def stop_asked(callback: Callback, answer: Any) -> bool:
    """Whether ``callback``'s ``on_generation`` asked to stop: a flag read as ``bool`` does (True or a nonzero integer
    stops; False, 0 or None goes on). Anything else is refused, as a returned row (the way of other loggers) is truthy
    and would stop the run after one generation."""
    flag = isinstance(answer, Tensor) and answer.numel() == 1 and not answer.is_floating_point() and not answer.is_complex()
    if answer is None or flag or isinstance(answer, numbers.Integral | np.bool_):  # Integral: bool and numpy ints too
        return bool(answer)
    raise UsageError(
        "callbacks",
        f"{type(callback).__name__}.on_generation returned a {type(answer).__name__}, not True (stop), False or None",
        "return True to stop training, nothing to go on (what it sets in the row is logged as it is)",
    )


def stop_reason(state: TrainState, row: dict[str, Any], interrupted: bool, asked: bool, time_up: float) -> str | None:
    """Why to stop after this row, or None to go on; ``time_up``: this call's seconds once ``--max-seconds``
    had passed when the generation's evaluation was decided (so a run it ends was evaluated last), else 0."""
    target = state.target
    if target is not None and row.get("eval_return", -math.inf) >= target:
        return f"solved: eval_return {row['eval_return']:.2f} >= {target:g}"
    if budget_spent(state.config, row["timesteps"]):
        return f"timestep budget reached: {row['timesteps']:,} timesteps >= --max-timesteps {state.config.max_timesteps:,}"
    if time_up:
        return f"stopped after {time_up:.0f} s of this call (--max-seconds {state.config.max_seconds:g})"
    if asked:
        return "stopped by a callback"
    if interrupted:
        return "interrupted"
    return None


def budget_spent(config: TrainConfig, timesteps: int) -> bool:
    """Whether a run at ``timesteps`` (all ranks' training env steps, over resumes) has spent its ``--max-timesteps``."""
    return 0 < config.max_timesteps <= timesteps


# what an env worker process's end raises (flipes.rl.workers says which; a pipe of another vector env: a bare error)
_WORKER_ENDED = (WorkerEndedError, EOFError, BrokenPipeError, ConnectionResetError)


def _cut_short(e: BaseException, stop: StopRequest, comm: dist.Comm, what: str, kept: str) -> bool:
    """After a stop signal to the whole process group (Slurm's SIGTERM), which also ends the env's worker processes,
    say that ``what`` was cut short by ``e`` and what is ``kept``, and return True; False (the caller re-raises) without
    a signal, or with several ranks, which must leave the loop together (the error ends the job). A worker that ended
    without a signal (the out-of-memory killer) is raised here, in one line saying also ``what`` and the run's last
    checkpoint."""
    if not stop.requested or comm.size > 1:
        if isinstance(e, WorkerEndedError):
            raise WorkerEndedError(f"{what}: {e}; {stop.kept()}") from None
        return False
    print_note(f"{what} was cut short after the stop signal ({type(e).__name__}: a signal to the whole process group ends "
               f"the env's worker processes too); {kept}")  # fmt: skip
    return True


def _summed(comm: dist.Comm, value: float) -> float:
    """``value`` summed over the ranks: a number of the host, so a CPU tensor whatever the run's device."""
    return comm.allreduce_sum_(torch.tensor([float(value)], dtype=torch.float64, device="cpu")).item()


def run_loop(
    state: TrainState, fitness: Fitness, evaluator: Callable[..., dict] | None, callbacks: list[Callback], stop: StopRequest
) -> str:
    """Generations until the budget, the target, the time limit, a callback or a signal; returns why it stopped."""
    config, es, comm, model = state.config, state.es, state.comm, state.model
    obs_norm = getattr(model, "obs_norm", None)
    start = time.perf_counter() - state.seconds  # the run's wall time counts over resumes (row["seconds"])
    began = time.perf_counter()  # --max-seconds is this call's: a requeued job gets its time limit afresh
    if state.resumed and state.target is not None and state.best >= state.target:  # e.g. a requeue with --resume auto
        before = f"eval_return {state.best:.2f} >= {state.target:g} before this resume"
        return f"solved: {before} (--target none or a higher one trains on)"
    if state.asked_generations is not None:  # e.g. --generations 10 meant as "10 more"
        return (
            f"nothing trained: the run is at generation {es.generation}, past --generations {state.asked_generations}, "
            "which counts all generations, not more of them (raise it to train on)"
        )
    steps = int(_summed(comm, getattr(fitness, "timesteps", 0)))
    if budget_spent(config, steps):  # e.g. a requeue with --resume auto, or --max-timesteps meant as "more"
        return (
            f"nothing trained: the run is at {steps:,} timesteps, past --max-timesteps {config.max_timesteps:,}, "
            "which counts all of the run's timesteps, not more of them (raise it to train on)"
        )
    if _summed(comm, stop.requested) > 0:  # a signal while the run directory was written: no generation begins
        return "interrupted"
    stop.running = True
    while es.generation < config.generations:
        gen = es.generation
        bytes_before, t0 = comm.bytes_sent, time.perf_counter()
        try:
            # a policy of one's own that samples its actions, a --fitness drawing its minibatch: the same draws in every
            # run of the seed, and on every rank (CheckedFitness seeds each part of a population alike again)
            with es.population() as pop, seeded_global_rngs(global_seed(config.seed, gen)):
                values = fitness(model, pop)
        except _WORKER_ENDED as e:
            if not _cut_short(
                e, stop, comm, f"generation {gen}", f"the checkpoint holds the {gen} whole generation(s) before it"
            ):
                raise
            return "interrupted"
        if isinstance(fitness, RolloutFitness):
            values = values.cpu()  # once: tell reads the fitness on the host anyway
        if isinstance(fitness, RolloutFitness) and not torch.isfinite(values).all():
            problem = f"generation {gen}: the population's returns are not finite (the actions or the env overflowed)"
            env = f"check the env and its --env-kwargs {json.dumps(config.env_kwargs)}" if config.env_kwargs else "check the env"
            shift = f", or --reward-shift's size ({config.reward_shift:g})" if config.reward_shift else ""  # subtracted each step
            raise UsageError("--sigma", problem, f"lower {_step_options(config, '--sigma', '--lr')}{shift}, or {env}")
        with warnings.catch_warnings():
            if isinstance(fitness, RolloutFitness):  # evaluated inside the population: a tie is the task's
                warnings.simplefilter("ignore", EqualFitnessWarning)
            stats = es.tell(values)
        if not (math.isfinite(stats["grad_norm"]) and math.isfinite(stats["update_ratio"])):
            problem = f"generation {gen}: the update made the parameters non-finite (grad_norm {stats['grad_norm']})"
            fix = f"lower {_step_options(config, '--lr', '--sigma')}; the last checkpoint holds the parameters before it"
            raise UsageError("--lr", problem, fix)
        if obs_norm is not None and obs_norm.pending is not None:
            # frozen during the generation, merged after it: summed per group, then over groups in
            # order, the same arithmetic for any number of processes (a few rows cross the network)
            pending = obs_norm.pending
            obs_norm.update(comm.allgather_tensor(pending.view(len(es.local_groups), -1, pending.shape[1]).sum(1)))
        # env steps of all ranks (each rank counts its own members' episodes)
        before, steps = steps, int(_summed(comm, getattr(fitness, "timesteps", 0)))
        row: dict[str, Any] = {
            "generation": gen,
            "fitness_mean": stats["fitness_mean"],
            "fitness_max": stats["fitness_max"],
            "fitness_min": stats["fitness_min"],
            "fitness_std": stats["fitness_std"],
            "grad_norm": stats["grad_norm"],
            "update_ratio": stats["update_ratio"],
            "sigma": stats["sigma"],
            "seconds": 0.0,
            "timesteps": steps,
            "steps_per_second": (steps - before) / (time.perf_counter() - t0),
            "bytes_sent": comm.bytes_sent - bytes_before,
            "params_sha256": tensors_sha256(model.parameters()),
        }
        if config.reward_shift and isinstance(fitness, RolloutFitness) and fitness.last_returns is not None:
            # the fitness is shifted: the population's plain mean return beside it (OpenAI ES's EpRewMean)
            row["return_mean"] = _summed(comm, fitness.last_returns.sum().item()) / config.popsize
        if es.best is not None:  # --track-best: the running maximum, and the member it came from
            row["best_member_fitness"], row["best_member_generation"] = es.best.fitness, es.best.generation
        if comm.size > 1 and (gen + 1) % config.check_every == 0:
            dist.check_identical(comm, model.state_dict(), "parameters or buffers", hint=rank_difference_hint(model))
        interrupted = _summed(comm, stop.requested) > 0  # a signal may reach one rank only
        elapsed = time.perf_counter() - began
        time_up = elapsed if 0 < config.max_seconds <= elapsed else 0.0
        # the last generation is evaluated when a budget or --max-seconds ends the run (a signal's
        # checkpoint does not wait for it, and a callback's stop comes after the row)
        last = gen == config.generations - 1 or budget_spent(config, steps)
        evaluate = gen % config.eval_every == 0 or last or time_up
        decided: dict[str, Any] = {}
        if comm.rank == 0:
            if evaluate:
                try:
                    evaluated = evaluate_center(state, evaluator, gen)
                except _WORKER_ENDED as e:
                    if not _cut_short(e, stop, comm, f"the evaluation of generation {gen}", "its row has no eval_return"):
                        raise
                    evaluated = {}
                clash = sorted(k for k in evaluated if k in row)  # an evaluate() dict naming a column of the row
                if clash:
                    raise UsageError("evaluate", f"returned {', '.join(clash)}, which the row has already", "rename them")
                row.update(evaluated)
            row["seconds"] = time.perf_counter() - start  # with this generation's evaluation
            state.seconds, state.timesteps = row["seconds"], steps
            state.best = max(state.best, row.get("eval_return", -math.inf))
            state.metrics.append(row)
            asked = False
            for cb in callbacks:
                asked = stop_asked(cb, cb.on_generation(state, row)) or asked
            decided = {
                "reason": stop_reason(state, row, interrupted, asked, time_up),
                "row": {k: v for k, v in row.items() if k not in RANK_ROW},  # evaluation, callbacks' keys
                "best": state.best,
                "optimizer": optimizer_settings(es.optimizer) if comm.size > 1 else None,
            }
        if comm.size > 1:
            decided = comm.bcast(decided)  # all ranks log the same row and stop alike
            if comm.rank != 0:
                set_optimizer_settings(es.optimizer, decided["optimizer"])  # a callback's lr schedule: on every rank
                row.update(decided["row"])
                state.seconds, state.timesteps, state.best = row["seconds"], steps, decided["best"]
                state.metrics.append(row)
        if decided["reason"] is not None:
            return decided["reason"]
    return "generations"
