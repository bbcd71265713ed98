"""What :func:`flipes.train`'s loop holds and returns: :class:`TrainState`, as callbacks see it (and what a
checkpoint saves of it), and :class:`TrainResult`."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from flipes import dist
from flipes.callbacks import Callback
from flipes.config import TrainConfig
from flipes.errors import UsageError
from flipes.es import FlipES
from flipes.es.optimizer import step_sizes
from flipes.es.ranks import shaping_name


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
    # on ranks other than 0 (which run no callbacks): the user's, which take rank 0's callbacks' states every generation
    peer_callbacks: list[Callback] = field(default_factory=list)
    saved_callbacks: dict[str, Any] = field(default_factory=dict)  # their states in the resumed checkpoint
    asked_generations: int | None = None  # a resume's --generations below the run's own, which is kept
    began: float = field(default_factory=time.perf_counter)  # when the call began (perf_counter): --max-seconds counts from it
    saved_es_settings: dict[str, Any] = field(default_factory=dict)  # what callbacks had set in the resumed checkpoint
    # the state of a shaping of one's own that a callback had set (its state_dict()): loaded after on_train_start
    saved_shaping_state: Any = None
    built_es_settings: dict[str, Any] = field(init=False)  # the FlipES's as the options built it
    built_steps: list[float] = field(init=False)  # the optimizer's step sizes as built (a change of them is logged)

    def __post_init__(self) -> None:
        self.built_es_settings = es_settings(self.es)
        self.built_steps = step_sizes(self.es.optimizer)

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``checkpoint.pt`` holds: the ES state (model, optimizer, generation), the run's counters, the user's
        callbacks' states and what they set on the FlipES (:func:`es_settings`, where other than the options')."""
        saved = callback_states(self.callbacks)
        changed = {k: v for k, v in es_settings(self.es).items() if v != self.built_es_settings[k]}
        return {
            "es": self.es.state_dict(),
            "timesteps": self.timesteps,
            "seconds": self.seconds,
            "best": self.best,
            "config": dataclasses.asdict(self.config),
            **({"callbacks": saved} if saved else {}),
            **({"es_settings": changed} if changed else {}),
        }


def es_settings(es: FlipES) -> dict[str, Any]:
    """What a callback may set on the FlipES between generations besides the optimizer's settings (whose state the
    FlipES saves): ``weight_decay``, and the shaping by its name (``module:qualname``: a checkpoint holds no code)."""
    return {"weight_decay": es.weight_decay, "shaping": shaping_name(es.shaping)}


def take_saved_es_settings(state: TrainState) -> None:
    """Give a resumed run's FlipES what callbacks had set on it when the checkpoint was written (``es_settings`` there):
    the options build it as the run began, and a schedule that set it once (or sets it after each generation) would
    otherwise leave the first resumed generations on those, silently another run. A shaping is taken back where its
    name is a function at the top level of a module this process has imported (:func:`unrestored_shaping` says where
    not)."""
    saved = state.saved_es_settings
    if "weight_decay" in saved:
        state.es.weight_decay = saved["weight_decay"]
    if "shaping" in saved and (fn := _function_named(saved["shaping"])) is not None:
        state.es.shaping = fn


def take_saved_shaping_state(state: TrainState) -> None:
    """Give a shaping of one's own that a callback set, and sets again in its ``on_train_start``, the state it had in the
    resumed checkpoint (its ``state_dict()``; held back from the FlipES's load, whose shaping as the options built it
    cannot take it), so that the run shapes as an unstopped one would. Where the callback does not set it again
    (another shaping's name), :func:`unrestored_shaping` says so."""
    saved, state.saved_shaping_state = state.saved_shaping_state, None
    load = getattr(state.es.shaping, "load_state_dict", None)
    if saved is not None and callable(load) and shaping_name(state.es.shaping) == state.saved_es_settings.get("shaping"):
        load(saved)


def unrestored_shaping(state: TrainState) -> str:
    """The caution for a resumed run whose checkpoint records a shaping set by a callback that the FlipES does not hold
    now (after the callbacks' ``on_train_start``): one that cannot be found by its name (a lambda, a local function, an
    object); empty where there is none."""
    name = state.saved_es_settings.get("shaping")
    if name is None or name == shaping_name(state.es.shaping):
        return ""
    return (
        f"the checkpoint records es.shaping = {name}, set by a callback, which this resume cannot take back by its name "
        "(a lambda, a local function or an object has none to find it by; a function at the top level of an imported "
        f"module has): it trains with {shaping_name(state.es.shaping)} until a callback sets it again; set it in the "
        "callback's on_train_start too (one with a state_dict then takes its saved state back), or assign a function "
        "defined at the top level of a module"
    )


def _function_named(name: str) -> Any:
    """The function whose :func:`~flipes.es.ranks.shaping_name` is ``name``, found in a module this process has
    imported (a checkpoint imports no code), or None."""
    module, _, qualname = name.partition(":")
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, types.FunctionType) and shaping_name(found) == name else None


def callback_keys(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Each callback's key in a checkpoint: its position and class, ``"0:HallOfFame"``."""
    return [(f"{i}:{type(cb).__qualname__}", cb) for i, cb in enumerate(callbacks)]


def callback_states(callbacks: list[Callback]) -> dict[str, Any]:
    """Each callback's ``state_dict()`` by its key, checked for a checkpoint; those returning None left out."""
    saved = {}
    for key, cb in callback_keys(callbacks):
        value = cb.state_dict()
        if value is not None:
            check_saveable(value, f"{key}.state_dict()")
            saved[key] = value
    return saved


def load_callback_states(callbacks: list[Callback], states: dict[str, Any]) -> None:
    """Each callback of ``callbacks`` whose key ``states`` holds takes that state back (``load_state_dict``)."""
    for key, cb in callback_keys(callbacks):
        if key in states:
            cb.load_state_dict(states[key])


def take_rank_0_states(callbacks: list[Callback], states: dict[str, Any], rank: int) -> None:
    """Rank ``rank``'s copies of the user's callbacks take rank 0's ``states`` (``load_state_dict``), as a resume does.

    Raises:
        UsageError: rank 0 has a callback with state that this rank was not given (by position and class): what its
            ``load_state_dict`` sets (a curriculum's env settings) would be rank 0's alone, and nothing would notice.
    """
    own = callback_keys(callbacks)
    missing = sorted(set(states) - {key for key, _ in own})
    if missing:
        raise UsageError(
            "callbacks",
            f"rank 0's callback(s) {', '.join(missing)} (position:class) hold state that rank {rank} has no copy of to "
            f"take (its callbacks: {', '.join(k for k, _ in own) or 'none given'}), so what they set would be rank 0's alone",
            "pass the same callbacks in the same order on every rank (rank 0 alone runs their hooks)",
        )
    load_callback_states(callbacks, states)


def check_saveable(value: Any, where: str) -> None:
    """Raise a UsageError for what a checkpoint cannot hold (it loads with ``weights_only``)."""
    # np.float64 is a float, yet weights_only loading refuses it: save_checkpoint's TypeError mid-run otherwise
    if isinstance(value, Tensor | int | float | bool | str | type(None)) and not isinstance(value, np.generic):
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
        "return tensors, numbers, strings, None, and lists, tuples and dicts of them (float(x) for a numpy number, "
        "torch.as_tensor(array) for an array)",
    )


@dataclass(repr=False)
class TrainResult:
    """What :func:`flipes.train` returns.

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
        eval_return: the last evaluation's ``eval_return`` in this call's rows, None where there was none.
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

    def __repr__(self) -> str:
        """A summary that fits a notebook cell's output: the rows counted and the last one's fitness, the model and
        config by name (every row, the layers and every option would fill screens: ``result.metrics``, ``result.config``)."""
        last = self.metrics[-1] if self.metrics else {}
        rows = f"{len(self.metrics)} rows" + "".join(
            f", {key}={last[key]:.6g}" for key in ("fitness_mean", "fitness_max") if isinstance(last.get(key), int | float)
        )
        return (
            f"TrainResult(reason={self.reason!r}, metrics=[{rows}], eval_return={self.eval_return!r}, best={self.best!r}, "
            f"run_dir={str(self.run_dir)!r}, model={type(self.model).__name__}, es={self.es!r})"
        )
