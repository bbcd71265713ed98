"""Training as a library function: ``flipes.train(config, callbacks=...)``, the loop of ``flipes train``.

The loop is Salimans et al.'s ES (2017, arXiv:1703.03864) over FlipES's Flipout population (Wen et
al., ICLR 2018, arXiv:1803.04386), built from small steps: what the config builds
(:mod:`flipes.builders`), a resumed run's state (:mod:`flipes.resume`), :func:`~flipes.evaluation.evaluate_center`,
:func:`~flipes.stopping.stop_reason`. Rows go to callbacks (``flipes.callbacks``); under MPI every rank runs the loop
on its block of groups and rank 0 alone evaluates and runs the callbacks (:mod:`flipes.rank_zero`). What the loop
holds and returns is in :mod:`flipes.train_state`, Ctrl-C and SIGTERM in :mod:`flipes.interrupts`, the checks of the
callbacks' hooks in :mod:`flipes.hooks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import shlex
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ParamSpec

import gymnasium as gym
import torch

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
from flipes.callbacks import Callback, Checkpointer, OutcomePrinter, PlainRow, ProgressPrinter
from flipes.checkpoint import tensors_sha256
from flipes.config import TrainConfig, resolve_groups, resolve_target, resume_dir, validate
from flipes.errors import UsageError, WorkerEndedError, caller_stacklevel
from flipes.es.optimizer import optimizer_settings, step_sizes
from flipes.es.ranks import send_failure
from flipes.evaluation import evaluate_center
from flipes.hooks import ConfigGuard, checked_callbacks
from flipes.interrupts import Interrupted, StopRequest  # noqa: F401 (Interrupted: what train raises, named from here)
from flipes.nn import flipout
from flipes.nn.convert import dropout_fix, training_dropout
from flipes.plugins import NAMED, Plugins
from flipes.rank_zero import (
    ESSettings,
    on_rank_0,
    raise_shared_error,
    rank_difference_hint,
    run_on_rank_0,
    set_es_settings,
    set_optimizer_settings,
    shared_error,
)
from flipes.resume import agree, restore
from flipes.rl import EnvPoolVectorEnv, RolloutFitness
from flipes.rl.envpool_vec import envpool_atari
from flipes.rl.envs import NonFiniteRewards, base_id, print_note
from flipes.rundir import check_not_in_use, check_run_dir, prepare_run_dir
from flipes.search import check_decayable, scale_steps, scheduled_lr, step_settings
from flipes.stopping import budget_spent, stop_asked, stop_reason
from flipes.train_state import (
    TrainResult,
    TrainState,
    callback_keys,
    callback_states,
    load_callback_states,
    take_rank_0_states,
    take_saved_es_settings,
    take_saved_shaping_state,
    unrestored_shaping,
)


def _step_options(config: TrainConfig, first: str, second: str) -> str:
    """The options whose size can make a generation's parameters or returns overflow: adapted σ's rate (--sigma-lr)
    among them where it is on (a large one overflows log σ within a generation or two)."""
    return f"{first}, {second} or --sigma-lr" if config.sigma_lr > 0 else f"{first} or {second}"


Params = ParamSpec("Params")


def _warnings_each_call(function: Callable[Params, TrainResult]) -> Callable[Params, TrainResult]:
    """``function`` with the warnings it raises shown in each call, once per place as ever, not once per process:
    Python's registry of warnings shown is keyed by the caller's line, which a notebook's cell run again (or a loop
    of calls) repeats, so a mistake warned of in one run went unsaid in every later one. Entering catch_warnings makes
    the registries stale (a change of the filters); it also puts back the filters and showwarning a run's code set.
    It is entered holding the run (another thread's call refused first): catch_warnings saves and restores the
    process's state, so a second thread's call entered during a run and left after it would put that run's back."""

    @functools.wraps(function)
    def each_call(*args: Params.args, **kwargs: Params.kwargs) -> TrainResult:
        with _one_run_at_a_time(), warnings.catch_warnings():
            return function(*args, **kwargs)

    return each_call


@_warnings_each_call
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
            function of the generation (a run records its options as numbers: another schedule runs as
            ``FlipES(sigma=fn)`` in a loop of one's own).

    Returns:
        :class:`TrainResult`.

    Raises:
        UsageError: a mistake in the options, env id, plug-ins or run directory (the command line
            prints it as one line), or another thread's ``flipes.train`` running in this process. Exceptions raised by
            user code propagate unchanged.
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
    began = time.perf_counter()  # --max-seconds counts this call's wall time: building the envs and the model too
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
    callbacks = checked_callbacks(callbacks)
    plugins = Plugins.take(overrides)
    config = TrainConfig.for_env(**overrides) if config is None else config.replace(**overrides)
    plugins.check(config.fitness)
    comm = comm if comm is not None else dist.world(config.mpi_timeout)  # its startup is bounded by it too
    validate(config, comm.size)
    config, groups_note = resolve_groups(config, comm.size)  # the number the run records
    config = config.resolve_auto_resume()
    threads_before = torch.get_num_threads()  # the run is held (one at a time) by _warnings_each_call
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, comm, callbacks, plugins, [groups_note] if groups_note else [], began)
    finally:
        torch.set_num_threads(threads_before)  # the caller's process as it was


# the thread whose flipes.train runs, and how many of its calls are under way (one started from a callback nests); the
# state it guards is the process's own (its global random generators, torch's thread count), so the guard is too
_RUNNING: dict[str, Any] = {"thread": None, "depth": 0}
_RUNNING_LOCK = threading.Lock()


@contextlib.contextmanager
def _one_run_at_a_time() -> Iterator[None]:
    """Refuse a run while another thread's runs: each generation seeds torch's, NumPy's and Python's global generators
    (and a run sets torch's thread count), which two runs at once (Optuna's ``n_jobs=2``) would set under each other:
    their results would depend on timing, and the caller's generators be left in a run's state."""
    me = threading.current_thread()
    with _RUNNING_LOCK:
        other = _RUNNING["thread"]
        if other is not None and other is not me and other.is_alive():
            raise UsageError(
                "flipes.train",
                f"another flipes.train is running in this process (thread {other.name!r}), and each run seeds torch's, "
                "NumPy's and Python's global random generators every generation: two at once would reseed them under "
                "each other, their results depending on timing",
                "run the trials one at a time (Optuna: n_jobs=1), or each in a process of its own",
            )
        if other is not me:  # none, or a thread that is no more (one of the parent process, after a fork)
            _RUNNING["thread"], _RUNNING["depth"] = me, 0
        _RUNNING["depth"] += 1
    try:
        yield
    finally:
        with _RUNNING_LOCK:
            _RUNNING["depth"] -= 1
            if not _RUNNING["depth"]:
                _RUNNING["thread"] = None


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


def _train(
    config: TrainConfig, comm: dist.Comm, callbacks: list[Callback], plugins: Plugins, notes: list[str], began: float
) -> TrainResult:
    if isinstance(comm, dist.MPIComm):
        comm.start_watchdog(config.mpi_timeout)  # from the first exchange on: a stopped rank cannot hang the job
    try:
        return _train_watched(config, comm, callbacks, plugins, notes, began)
    except SystemExit as e:  # sys.exit in a fitness or callback on one rank: the others must not wait for it
        if comm.size > 1:
            dist.abort_on_exit(comm, e)
        raise
    finally:
        if isinstance(comm, dist.MPIComm):
            comm.start_watchdog(0)


def _train_watched(
    config: TrainConfig, comm: dist.Comm, callbacks: list[Callback], plugins: Plugins, notes: list[str], began: float
) -> TrainResult:
    lead = comm.rank == 0
    device = config.device
    if device == "cuda" and comm.size > 1:  # rank -> a GPU of its node, shared if too few
        device = f"cuda:{comm.local_rank % torch.cuda.device_count()}"
    # cuda:N the current GPU while the run lasts (no stray context on GPU 0 from code that says only "cuda"), the
    # caller's again after it (a sweep's next trial, a notebook's next cell)
    on_gpu = torch.device(device).type == "cuda" and torch.device(device).index is not None
    gpu = torch.cuda.device(torch.device(device)) if on_gpu else contextlib.nullcontext()
    run_dir = config.run_dir()
    in_place = bool(config.resume) and resume_dir(config.resume).resolve() == run_dir.resolve()
    # a signal while envs and the model are built stops at once (it raises Interrupted): nothing is written before
    untouched = f"{run_dir} is as it was: --resume {shlex.quote(config.resume)} continues it" if in_place else \
                f"nothing was written to {run_dir}: the same command starts the run"  # fmt: skip
    with gpu, StopRequest(say=lead, resume=str(run_dir), setting_up=untouched) as stop:
        return _set_up_and_run(config, comm, callbacks, plugins, notes, device, run_dir, stop, began)


def _set_up_and_run(
    config: TrainConfig,
    comm: dist.Comm,
    callbacks: list[Callback],
    plugins: Plugins,
    notes: list[str],
    device: str,
    run_dir: Path,
    stop: StopRequest,
    began: float,
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
        # the initial parameters: a function of the seed alone, also where a --model initializes from NumPy's or
        # Python's generators (ported code); torch's is seeded with the seed itself, as it always was
        with seeded_global_rngs(config.seed):
            model = build_model(config, env, plugins)
            try:
                model = flipout(model).to(device)
            except ValueError as e:
                raise UsageError("--model", str(e)) from None
        es = build_es(config, model, comm, plugins)
        check_decayable(config, es.optimizer)
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
                f"{dropout_fix(model, 'return model.eval() from the model function')} unless that is meant"
            )
        fitness = build_fitness(config, env, model, plugins)
        notes.extend(unused_option_notes(config))
        evaluator = build_evaluator(config, device, comm, env, plugins)
        cleanup.callback(_close, getattr(evaluator, "env", None))
        state = TrainState(config, model, es, comm, run_dir, resolve_target(config), began=began)
        if config.resume:
            notes.extend(restore(state, config.resume, device, fitness))
            take_saved_es_settings(state)  # what callbacks had set on the FlipES (the options built it as the run began)
            # EnvPool's streams are fast-forwarded by resets alone: not a replay of an env that draws in its steps
            # (common episodes reseed such an env every generation: they resume bit for bit)
            if es.generation > 0 and (caution := resumed_streams_caution(config, env)):
                cautions.append(caution)
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
        state.callbacks, state.peer_callbacks = users, [] if lead else callbacks
        keys = callback_keys(users)
        load_callback_states(users, state.saved_callbacks)  # a resumed run's callbacks take their saved state back
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
            _caution(config, text)
        checkpointer = next((cb for cb in standard if isinstance(cb, Checkpointer)), None)

        def last() -> str:  # rank 0's checkpoints (the other ranks write none)
            at = checkpointer.saved_at if checkpointer is not None else -1
            if at < 0:
                return "the last checkpoint"
            # numbered as the rows and flipes evaluate number it: es.generation counts the generations it holds
            return f"the last checkpoint ({f'after generation {at - 1}' if at else 'before any generation'})"

        stop.last = last  # a first signal waits until the final checkpoint is written, too
        guard = ConfigGuard(state.config)  # the options every rank's loop reads: no callback (rank 0's alone) changes them
        settings = ESSettings(es)  # what the user's on_train_start sets on the FlipES reaches every rank below

        def start() -> dict[str, Any] | None:  # rank 0's (the others have no callbacks to run); its error every rank's
            for cb in standard + users:  # the run directory is complete when the user's callbacks start
                try:
                    cb.on_train_start(state)
                except Exception as e:
                    _attribute_hook(e, cb, users, stop, "on_train_start")
                    raise
                guard.check(state.config, cb, "on_train_start")
            take_saved_shaping_state(state)  # into a shaping a callback set again, before it is sent to the other ranks
            if comm.size == 1:
                return None
            # what a user's on_train_start set in the optimizer (a warm-up lr) and the FlipES, and the user's callbacks'
            # states (a resume's, what on_train_start set): every rank's copies take rank 0's
            return {"optimizer": optimizer_settings(es.optimizer), "es": settings.sent(es), "callbacks": callback_states(users)}

        started = run_on_rank_0(comm, start, "in on_train_start")
        if lead and (caution := unrestored_shaping(state)):
            _caution(config, caution)
        if started is not None and not lead:
            set_optimizer_settings(es.optimizer, started["optimizer"])
            set_es_settings(es, started["es"])
            take_rank_0_states(state.peer_callbacks, started["callbacks"], comm.rank)
        # what the user's callbacks add to a row reaches the sinks, as plain JSON values
        reason = run_loop(state, fitness, evaluator, [*users, PlainRow(), *standard], stop)
        # the line saying how the run ended comes once the run's files are written (curves.png takes a second): a second
        # signal before it, which stops at once, is then the one line, not a second one after "interrupted; ..."
        printers = [cb for cb in standard if isinstance(cb, ProgressPrinter | OutcomePrinter)]
        ended: Exception | None = None  # rank 0's error in on_train_end: raised on every rank once the files are closed
        for cb in [cb for cb in standard if cb not in printers] + printers + users:
            try:
                cb.on_train_end(state, reason)
            except Exception as e:
                _attribute_hook(e, cb, users, stop, f"on_train_end, once the run had ended (stopped: {reason})")
                if comm.size == 1:
                    raise
                ended = e
                break
    if comm.size > 1:  # every rank returns once rank 0 has written the run directory: the script may read it next
        received = comm.bcast(None if ended is None else shared_error(ended))
        if ended is not None:
            raise ended
        raise_shared_error(received, f"in on_train_end (stopped: {reason})")
    best = state.best if math.isfinite(state.best) else None
    return TrainResult(model, es, state.metrics, run_dir, reason, config, best)


def _close(env: gym.vector.VectorEnv | None) -> None:
    if env is not None:
        env.close()


# row entries each rank measures for itself; rank 0 sends the others
RANK_ROW = ("steps_per_second", "bytes_sent")


def resumed_streams_caution(config: TrainConfig, env: Any) -> str | None:
    """The caution of a resume on an EnvPool env that draws random numbers in its steps (EnvPool fast-forwards its
    episodes by resets alone: the run plays other episodes than one never stopped), with what resumes bit for bit;
    None where the resume replays them (common episodes reseed the env every generation)."""
    if not isinstance(env, EnvPoolVectorEnv) or config.common_episodes or not (what := env.step_draws()):
        return None
    name = base_id(config.env)
    if envpool_atari(env.env_id):  # gymnasium's ALE/Name-v5 is another env (its own frames and options), not this one
        fix = (
            "a run started with --common-episodes (every generation reseeds its episodes) or with "
            "--env-kwargs '{\"repeat_action_probability\": 0}' (no sticky actions) resumes bit for bit"
        )
    elif name in gym.registry:
        fix = f"--env gymnasium:{name} reseeds every generation and resumes bit for bit"
    else:
        fix = "a run started with --common-episodes reseeds its episodes every generation and resumes bit for bit"
    return (
        f"resumed on EnvPool's {env.env_id} ({what}), which draws random numbers in its steps: EnvPool fast-forwards each "
        f"env's episodes by resets alone, so the run now plays other episodes than one never stopped; {fix}"
    )


def unused_option_notes(config: TrainConfig) -> list[str]:
    """Options given that this run does not use, said in a note rather than refused: a shared set of options (a
    --config file, the quiet options of a script's runs) carries them for the runs that do use them. None on a resume,
    whose options are the run's recorded ones."""
    if config.resume:
        return []
    from flipes.rl.presets import defaults as preset

    notes = []
    env_id = config.env.strip()
    row = {} if env_id.lower() == "none" else preset(env_id, config.algo)
    unset = TrainConfig.__dataclass_fields__["eval_episodes"].default
    if config.fitness and config.eval_episodes not in (unset, row.get("eval_episodes", unset)):
        notes.append(
            f"--eval-episodes {config.eval_episodes} is not used: --fitness {config.fitness} replaces flipes' evaluation "
            "by the evaluate() beside it (none: no eval_return), which sets its own episodes"
        )
    if config.env_threads and env_id.startswith(("flipes/", "envs:flipes/")):
        notes.append(
            f"--env-threads {config.env_threads} is not used: {env_id} is a torch env, stepped on --device "
            f"{config.device} by no engine threads (--threads sets torch's)"
        )
    return notes


def own_lr_note(config: TrainConfig, optimizer: torch.optim.Optimizer) -> str:
    """What ``--optimizer FN`` steps at where it is not ``--lr``: the function builds its optimizer with its own settings,
    so ``--lr`` (given or the default) is not used, but for ``--lr-decay``'s factor; empty where they agree or no
    ``--optimizer`` is given."""
    steps = step_sizes(optimizer)
    if not config.optimizer or steps == [config.lr]:
        return ""
    at = f"at lr {', '.join(f'{x:g}' for x in steps)}" if steps else "with no lr"
    # with a decay, --lr is no step but the scale of the schedule's factor (and of --lr-min)
    unused = (
        f"which --lr-decay scales by max(lr·d^g, --lr-min)/lr of --lr {config.lr:g}, --lr-min on --lr's scale"
        if config.lr_decay != 1
        else f"--lr {config.lr:g} is not used"
    )
    return (
        f"--optimizer {config.optimizer} builds {type(optimizer).__name__} {at}, its own{',' if config.lr_decay != 1 else ':'} "
        f"{unused} (a torch.optim class, such as torch.optim.sgd:SGD, is built at --lr)"
    )


def _overridden(gen: int) -> str:
    """What --lr-decay does to step settings changed since it last set them (by a callback's schedule)."""
    return (
        f"the optimizer's lr was changed after generation {gen - 1} (by a callback?), and --lr-decay sets each param "
        "group's lr (and max_speed) before every step from its first value: the change is overridden; set the group's "
        "initial_lr to move the schedule, or drop --lr-decay and schedule lr in the callback"
    )


def _caution(config: TrainConfig, text: str) -> None:
    """``text`` as the start of a run says its cautions: a note with the progress lines, else a warning."""
    if config.progress:
        print_note(text)
    else:
        warnings.warn(f"flipes.train: {text}", UserWarning, stacklevel=caller_stacklevel())


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


def _attribute(e: BaseException, stop: StopRequest, what: str) -> None:
    """Add a note to ``e``, raised by an env or code of one's own, saying that ``what`` (the generation's fitness, an
    evaluation) raised it and which checkpoint the run keeps: its traceback alone names neither."""
    if isinstance(e, Exception) and not isinstance(e, UsageError) and hasattr(e, "add_note"):  # Python >= 3.11
        e.add_note(f"flipes: raised in {what}; {stop.kept()}")


def _attribute_hook(e: BaseException, cb: Callback, users: list[Callback], stop: StopRequest, hook: str) -> None:
    """:func:`_attribute` for an exception of a user's callback ``cb`` (one of ``users``) in ``hook``: its traceback
    names neither the generation nor the checkpoint kept. flipes' own callbacks' errors speak for themselves."""
    if any(cb is own for own in users):
        _attribute(e, stop, f"{type(cb).__name__}.{hook}")


def _summed(comm: dist.Comm, value: float) -> float:
    """``value`` summed over the ranks: a number of the host, so a CPU tensor whatever the run's device."""
    return comm.allreduce_sum_(torch.tensor([float(value)], dtype=torch.float64, device="cpu")).item()


def _step_lr(config: TrainConfig, gen: int, optimizer: torch.optim.Optimizer) -> float | None:
    """The rows' ``lr`` of generation ``gen``'s step: ``--lr-decay``'s ``--lr`` of it, else the first param group's lr (a
    callback's schedule set it); None where that group has none (Hugging Face's Adafactor at its relative step)."""
    if config.lr_decay != 1:
        return scheduled_lr(config, gen)
    lr = optimizer.param_groups[0].get("lr")
    return None if lr is None else float(lr)


def _fitness_values(state: TrainState, fitness: Fitness, stop: StopRequest) -> torch.Tensor | None:
    """This rank's members' fitness of the generation under way (an env's returns on the host), or None where a stop
    signal cut it short (one process).

    Raises:
        UsageError: an env's returns are not finite.
    """
    config, es, gen = state.config, state.es, state.es.generation
    try:
        # a policy of one's own that samples its actions, a --fitness drawing its minibatch: the same draws in every run
        # of the seed, and on every rank (CheckedFitness seeds each part of a population alike again)
        with es.population() as pop, seeded_global_rngs(global_seed(config.seed, gen)):
            values = fitness(state.model, pop)
    except _WORKER_ENDED as e:
        if not _cut_short(
            e, stop, state.comm, f"generation {gen}", f"the checkpoint holds the {gen} whole generation(s) before it"
        ):
            raise
        return None
    except NonFiniteRewards as e:  # the env's at its first step: its options are suspects too
        raise NonFiniteRewards(e.cause, config.env_kwargs) from None
    except Exception as e:
        _attribute(e, stop, f"generation {gen}'s fitness" + (f" (the population's episodes of {config.env})" if
                   isinstance(fitness, RolloutFitness) else ""))  # fmt: skip
        raise
    if not isinstance(fitness, RolloutFitness):
        return values
    values = values.cpu()  # once: tell reads the fitness on the host anyway
    if not torch.isfinite(values).all():
        if callable(check := getattr(getattr(state.model, "obs_norm", None), "check_finite", None)):
            check()  # an env's nan observation made the actions nan: said as the env's, not as --sigma's
        problem = f"generation {gen}: the population's returns are not finite (the actions or the env overflowed)"
        env = f"check the env and its --env-kwargs {json.dumps(config.env_kwargs)}" if config.env_kwargs else "check the env"
        shift = f", or --reward-shift's size ({config.reward_shift:g})" if config.reward_shift else ""  # subtracted each step
        raise UsageError("--sigma", problem, f"lower {_step_options(config, '--sigma', '--lr')}{shift}, or {env}")
    return values


def run_loop(
    state: TrainState, fitness: Fitness, evaluator: Callable[..., dict] | None, callbacks: list[Callback], stop: StopRequest
) -> str:
    """Generations until the budget, the target, the time limit, a callback or a signal; returns why it stopped."""
    config, es, comm, model = state.config, state.es, state.comm, state.model
    guard = ConfigGuard(config)  # read on every rank (generations, check_every): a callback of rank 0 may not change it
    settings = ESSettings(es)  # es.weight_decay and es.shaping as rank 0's callbacks set them: sent to every rank
    obs_norm = getattr(model, "obs_norm", None)
    start = time.perf_counter() - state.seconds  # the run's wall time counts over resumes (row["seconds"])
    began = state.began  # --max-seconds is this call's (from its start): a requeued job gets its time limit afresh
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
    # an env's returns come from inside the population: a tie is the task's (a sparse reward), not a fitness run outside
    # it. Marked as said once, not by a warnings filter each generation: changing the filters resets Python's registry
    # of warnings shown, so a warning of the user's fitness would be shown again every generation
    if isinstance(fitness, RolloutFitness):
        es._told_equal = True

    def decide(gen: int, row: dict[str, Any], steps: int, evaluate: bool, interrupted: bool, time_up: float) -> dict[str, Any]:
        """Rank 0's end of generation ``gen``: its evaluation, the row's sinks and callbacks, what every rank takes of
        them (run_on_rank_0: their error is raised on every rank)."""
        if evaluate:
            try:
                evaluated = evaluate_center(state, evaluator, gen)
            except _WORKER_ENDED as e:
                if not _cut_short(e, stop, comm, f"the evaluation of generation {gen}", "its row has no eval_return"):
                    raise
                evaluated = {}
            except Exception as e:
                _attribute(e, stop, f"the evaluation of generation {gen}")
                raise
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
            try:
                asked = stop_asked(cb, cb.on_generation(state, row)) or asked
            except Exception as e:
                _attribute_hook(e, cb, state.callbacks, stop, f"on_generation of generation {gen}")
                raise
            guard.check(state.config, cb, f"on_generation of generation {gen}")
        return {
            # a signal during this generation's evaluation or callbacks stops after it too, as its note says (rank 0
            # decides for every rank)
            "reason": stop_reason(state, row, interrupted or stop.requested, asked, time_up),
            "row": {k: v for k, v in row.items() if k not in RANK_ROW},  # evaluation, callbacks' keys
            "best": state.best,
            "optimizer": optimizer_settings(es.optimizer) if comm.size > 1 else None,
            "es": settings.sent(es) if comm.size > 1 else None,
            "callbacks": callback_states(state.callbacks) if comm.size > 1 else None,
        }

    scaled: list[tuple[float, ...]] | None = None  # the step settings --lr-decay last wrote, None until it has
    told_override = False
    logs_lr = config.lr_decay != 1  # and from the first step at another lr than the optimizer's own (a callback's)
    while es.generation < config.generations:
        gen = es.generation
        bytes_before, t0 = comm.bytes_sent, time.perf_counter()
        try:
            values = _fitness_values(state, fitness, stop)
        except Exception as e:  # on this rank alone: sent on the fitness exchange the others are in, raised by every rank
            send_failure(es, e)
            raise
        if values is None:
            return "interrupted"
        if config.lr_decay != 1:  # set before each step from the generation alone: a resume continues it bit for bit
            if scaled is not None and step_settings(es.optimizer) != scaled and not told_override:
                told_override = True  # once: a callback's schedule sets them every generation
                if comm.rank == 0:
                    _caution(config, _overridden(gen))
            scale_steps(es.optimizer, scheduled_lr(config, gen) / config.lr)
            scaled = step_settings(es.optimizer)
        logs_lr = logs_lr or step_sizes(es.optimizer) != state.built_steps
        lr = _step_lr(config, gen, es.optimizer) if logs_lr else None  # read before the step: the lr it takes
        # a --shaping or --optimizer of one's own that draws (random tie-breaking): the seed's draws, alike on every rank
        with seeded_global_rngs(global_seed(config.seed, gen, "tell")):
            stats = es.tell(values)
        if not math.isfinite(stats["grad_norm"]) or not (math.isfinite(stats["update_ratio"]) or _finite(es.params)):
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
            **({"lr": lr} if lr is not None else {}),  # the lr this step took
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

        what = "" if not evaluate else "runs evaluate() where one is given, " if config.fitness else \
               f"evaluates the center policy over --eval-episodes {config.eval_episodes}, "  # fmt: skip
        with dist.waiting_for(comm, f"the end of generation {gen}: rank 0 {what}logs and checkpoints before it"):
            # all ranks log the same row and stop alike
            decide_now = functools.partial(decide, gen, row, steps, evaluate, interrupted, time_up)
            decided = run_on_rank_0(comm, decide_now, f"at the end of generation {gen} (its evaluation or a callback)")
        if comm.rank != 0:
            set_optimizer_settings(es.optimizer, decided["optimizer"])  # a callback's lr schedule: on every rank
            set_es_settings(es, decided["es"])  # its weight decay or shaping too
            take_rank_0_states(state.peer_callbacks, decided["callbacks"], comm.rank)  # a curriculum their states hold
            row.update(decided["row"])
            state.seconds, state.timesteps, state.best = row["seconds"], steps, decided["best"]
            state.metrics.append(row)
        if decided["reason"] is not None:
            return decided["reason"]
    return "generations"


def _finite(params: Iterable[torch.Tensor]) -> bool:
    """Whether every parameter is finite: read only where ``update_ratio`` is not, as a step that lands exactly on
    θ = 0 (a 1-D Vector whose first Adam step is its own value) is a ratio of inf with finite parameters."""
    return all(bool(torch.isfinite(p).all()) for p in params)
