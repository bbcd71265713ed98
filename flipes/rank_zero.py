"""Rank 0 alone under MPI: it runs the set-up's checks and the callbacks, and the other ranks follow it (its
errors, its optimizer settings; the hint where their models part)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from flipes import dist
from flipes.errors import UsageError

if TYPE_CHECKING:
    from flipes.es import FlipES

T = TypeVar("T")


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
    shared = comm.bcast(None if error is None else shared_error(error)[RANK_0_ERROR])  # a UsageError by its parts
    if error is not None:
        raise error
    if shared is not None:
        raise_shared_error({RANK_0_ERROR: shared}, "while the run was set up")


def run_on_rank_0(comm: dist.Comm, work: Callable[[], T], where: str) -> T:
    """Run ``work`` on rank 0 alone (the others wait for it) and return its result on every rank (one broadcast of it
    as it is: no result of flipes' is a dict of :data:`RANK_0_ERROR`); an Exception of it is raised on every rank
    instead, as :func:`on_rank_0` does (sent as :func:`shared_error`). ``where`` says in the others' error when rank 0
    failed."""
    if comm.size == 1:
        return work()
    error: Exception | None = None
    result: T | None = None
    if comm.rank == 0:
        try:
            result = work()
        except Exception as e:
            error = e
    received = comm.bcast(shared_error(error) if error is not None else result)
    if error is not None:
        raise error
    raise_shared_error(received, where)
    return received


# the key of what rank 0 sends in place of its result when it failed: no result of flipes' holds it
RANK_0_ERROR = "flipes: rank 0's error"


def shared_error(error: Exception) -> dict[str, Any]:
    """What rank 0 sends the others in place of a result when it raised ``error``: a UsageError by its parts (it
    pickles badly: its message alone would come back as the option), another by its type and message."""
    parts = (error.option, error.problem, error.fix) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
    return {RANK_0_ERROR: parts}


def raise_shared_error(received: Any, where: str, rank: int = 0, size: int = 0) -> None:
    """On a rank other than ``rank`` (0: rank 0's callbacks and checks; another: a rank of ``size`` whose fitness
    raised), raise that rank's error where ``received`` (what it sent) is :func:`shared_error`'s: its UsageError with
    the same parts (a fitness's, ``size`` given, saying ``(on rank R of N)`` after them: the cause is in that rank's data or env),
    another as a RuntimeError naming the rank, the error and ``where``; nothing otherwise. A script that catches the
    error then goes on alike on every rank, instead of the others waiting in the collective that rank left, until
    ``--mpi-timeout`` ends the job, blaming it as dead."""
    if not isinstance(received, dict) or RANK_0_ERROR not in received:
        return
    shared = received[RANK_0_ERROR]
    if isinstance(shared, tuple):
        error: Exception = UsageError(*shared)
        if size:  # one rank's fitness: the command line's line names it (flipes.commands.main_guard)
            error.args = (f"{error} (on rank {rank} of {size})",)
    else:
        error = RuntimeError(f"rank {rank} failed {where} ({shared}); its own lines say more")
    # uncaught: the rank that failed, which has the traceback, ends the job first (dist.wait_for_rank_0)
    error.flipes_from_rank_0 = True  # type: ignore[attr-defined]
    raise error


# why ranks may part in flipes.train although every rank runs the same script
CALLBACKS_RANK_0 = (
    "; callbacks run on rank 0 alone: one that changes the model or the FlipES (other than the optimizer's settings, "
    "such as an lr, es.weight_decay and es.shaping, which reach every rank) changes rank 0's alone"
)


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


def set_optimizer_settings(optimizer: torch.optim.Optimizer, settings: list[dict[str, Any]]) -> None:
    """Give ``optimizer`` rank 0's :func:`optimizer_settings`: callbacks run on rank 0 alone, so an lr schedule
    of one would otherwise step rank 0's parameters alone (a tensor setting is written in place, as torch holds it)."""
    for group, saved in zip(optimizer.param_groups, settings, strict=True):
        for key, value in saved.items():
            if isinstance(group.get(key), Tensor) and isinstance(value, Tensor):
                group[key].copy_(value)
            else:
                group[key] = value


class ESSettings:
    """What a callback of rank 0 may set on the FlipES between generations besides the optimizer's settings
    (``es.weight_decay``, ``es.shaping``), sent to the other ranks with them. Unsent, a shaping set on rank 0 alone went
    unnoticed under ``comm="allreduce"``: each rank shaped its share of the gradient by its own function, the sum was
    the same on every rank, and the run trained on a mix of the two. The shaping is sent where it is not the one last
    sent (a function is pickled by its module and name)."""

    def __init__(self, es: FlipES) -> None:
        self.shaping, self.optimizer = es.shaping, es.optimizer

    def sent(self, es: FlipES) -> dict[str, Any]:
        """Rank 0's settings to send: weight_decay, and the shaping where it changed.

        Raises:
            UsageError: the shaping a callback set cannot be sent (a lambda, a local function), or a callback replaced
                ``es.optimizer``, which no other rank has (its state and class are rank 0's alone: the ranks would part
                at the next step, found only by the ranks' check, up to ``--check-every`` generations later).
        """
        if es.optimizer is not self.optimizer:
            raise UsageError(
                "callbacks",
                f"a callback replaced es.optimizer with a {type(es.optimizer).__name__} on rank 0 alone (callbacks run on "
                "rank 0), and the other ranks would step with their own",
                "pass flipes.train(optimizer=...) a function that builds it, or change the settings of "
                "es.optimizer.param_groups (lr, momentum, ...), which reach every rank",
            )
        settings: dict[str, Any] = {"weight_decay": es.weight_decay}
        if es.shaping is not self.shaping:
            try:
                pickle.dumps(es.shaping)
            except Exception:  # pickle's errors for a lambda or local function: PicklingError, AttributeError, TypeError
                from flipes.es.ranks import shaping_name

                raise UsageError(
                    "callbacks",
                    f"a callback set es.shaping = {shaping_name(es.shaping)}, which cannot be sent to the other ranks "
                    "(callbacks run on rank 0 alone, and each rank shapes the fitness of its members)",
                    "assign a function defined at the top level of a module (flipes.shaping.z_score, or one of your own)",
                ) from None
            settings["shaping"] = self.shaping = es.shaping
        return settings


def set_es_settings(es: FlipES, settings: dict[str, Any]) -> None:
    """Give ``es`` rank 0's :meth:`ESSettings.sent` (each checked as ``es.<name> = value`` checks it)."""
    if settings["weight_decay"] != es.weight_decay:
        es.weight_decay = settings["weight_decay"]
    if "shaping" in settings:
        es.shaping = settings["shaping"]
