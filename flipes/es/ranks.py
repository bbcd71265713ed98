"""The processes of one run (``comm``, ``flipes.dist``): every process's fitness gathered in member order, and the
check that they hold the same parameters and settings (a rank apart would step its own center with the others'
fitness, silently)."""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flipes.checkpoint import tensors_sha256
from flipes.dist import split_groups
from flipes.errors import caller_stacklevel
from flipes.es.optimizer import optimizer_name, optimizer_settings
from flipes.es.state import configuration

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def _values(settings: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's settings as plain values: a tensor ``lr`` prints its device, ``cuda:<rank>`` on each rank."""
    return {k: v.tolist() if isinstance(v, Tensor) else v for k, v in settings.items()}


def _ranks_values(values: list[Any]) -> str:
    """Rank 0's value and up to 3 ranks' that differ from it: a setting per rank of a large job stays one short line."""
    others = [r for r, v in enumerate(values) if repr(v) != repr(values[0])]
    shown = ", ".join(f"rank {r} {values[r]!r}" for r in [0, *others[:3]])
    return shown + (f", ... ({len(others)} ranks differ from rank 0)" if len(others) > 3 else "")


def shaping_name(shaping: Any) -> str:
    """``module:qualname`` of a shaping function, with a ``functools.partial``'s arguments where they are plain values
    (``ars`` with its ``top``): the same on every rank whose FlipES was given the same shaping, never an address."""
    if isinstance(shaping, functools.partial):
        plain = (bool, int, float, str, type(None))
        args = [repr(a) if isinstance(a, plain) else type(a).__name__ for a in shaping.args]
        args += [f"{k}={v!r}" if isinstance(v, plain) else f"{k}={type(v).__name__}" for k, v in shaping.keywords.items()]
        return f"{shaping_name(shaping.func)}({', '.join(args)})"
    named = shaping if hasattr(shaping, "__qualname__") else type(shaping)
    return f"{getattr(named, '__module__', '?')}:{named.__qualname__}"


# the flag of a process whose fitness raised (send_failure), in place of gather_fitness's "compare" flag
FAILED = -1.0


def gather_fitness(es: FlipES, local: Tensor) -> Tensor:
    """Every process's fitness, in member order. With several processes each appends one flag saying whether
    it has yet to compare its parameters (built, or loaded since): every process sees every flag, so all of
    them compare together or none does, even where only some loaded a state (a comparison on those alone
    would meet the others' fitness exchange: garbled errors or a hang). 8 bytes a process, no extra call.
    The flag :data:`FAILED` says that a process's fitness raised (:func:`send_failure`): every process then raises
    its error at once (a second exchange, only then, carries the error).

    Raises:
        RuntimeError or UsageError: another process's fitness raised (:func:`flipes.rank_zero.raise_shared_error`).
    """
    if es.comm.size == 1:
        return es.comm.allgather_tensor(local)
    rows = es.comm.allgather_tensor(torch.cat((local, local.new_full((1,), float(not es._ranks_agree)))))
    group_size = es.popsize // es.groups
    counts = [len(split_groups(es.groups, r, es.comm.size)) * group_size + 1 for r in range(es.comm.size)]
    if rows.shape[0] != sum(counts):  # another rank's popsize or groups give it other members (ended by the job's abort)
        raise RuntimeError(
            f"FlipES: the processes sent {rows.shape[0] - es.comm.size} fitness values in all, where this one's "
            f"settings (popsize {es.popsize}, groups {es.groups}, {es.comm.size} processes) make {es.popsize}: "
            "they were built with another popsize or groups; build the FlipES alike on every rank"
        )
    pieces = rows.split(counts)
    flags = [piece[-1].item() for piece in pieces]
    if FAILED in flags:
        from flipes.rank_zero import raise_shared_error

        failed = flags.index(FAILED)
        shared = es.comm.allgather_object(None)[failed]
        raise_shared_error(shared, f"in generation {es.generation}'s fitness", failed, es.comm.size)
    if any(flags):
        check_ranks_agree(es)
    return torch.cat([piece[:-1] for piece in pieces])


def send_failure(es: FlipES, error: Exception) -> None:
    """This process's part of :func:`gather_fitness` where its fitness raised ``error``: the flag :data:`FAILED` on the
    exchange every process is in anyway, then the error (as :func:`flipes.rank_zero.shared_error` sends it), so that
    every process raises it at once rather than waiting for this one's fitness until ``--mpi-timeout`` (a script that
    catches it goes on alike on every rank). Nothing with one process."""
    if es.comm.size == 1:
        return
    from flipes.rank_zero import shared_error

    rows = torch.zeros(len(es.members) + 1, dtype=torch.float64)  # gather_fitness's dtype (check_fitness's float64)
    rows[-1] = FAILED
    es.comm.allgather_tensor(rows)
    es.comm.allgather_object(shared_error(error))


def rank_settings(es: FlipES) -> dict[str, Any]:
    """What every process of a run must share beside the parameters (compared by :func:`check_ranks_agree`)."""
    return {
        **configuration(es),
        "generation": es.generation,
        "sigma": es.mean_sigma(),
        "comm_mode": es.comm_mode,
        "weight_decay": es.weight_decay,
        "shaping": shaping_name(es.shaping),  # another shaping per rank: other weights from the same fitness
        "optimizer": f"{optimizer_name(es.optimizer)} {[_values(group) for group in optimizer_settings(es.optimizer)]}",
    }


def check_ranks_agree(es: FlipES) -> None:
    """Raise on every process when they hold different parameters (at the first tell, and again after a
    load on any of them): each would step its own center with the others' fitness, a silently broken
    run. The settings that make a generation's noise, minibatches and step are compared too (a seed per
    rank would give every rank its own noise and ``pop.generator()`` draws). Called on every process alike
    (:func:`gather_fitness`)."""
    settings = rank_settings(es)
    views = es.comm.allgather_object((settings, tensors_sha256(es.params)))
    differ = [k for k in settings if len({repr(view[0].get(k)) for view in views}) > 1]
    if differ:
        shown = "; ".join(f"{k}: {_ranks_values([view[0].get(k) for view in views])}" for k in differ)
        fix = (  # a state loaded on some ranks alone moves their generation (and σ, optimizer, parameters)
            "load the same state on every rank (es.load_state_dict on each), not on some alone"
            if "generation" in differ
            else "build the FlipES alike on every rank (the ranks already evaluate different members: one seed for all of them)"
        )
        raise RuntimeError(
            f"FlipES: the processes hold other settings ({shown}), so their noise, pop.generator() draws or steps "
            f"would differ and the run would go wrong silently; {fix}"
        )
    digests = [view[1] for view in views]
    if len(set(digests)) > 1:
        shown = ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests))
        raise RuntimeError(
            f"FlipES: the processes hold different parameters ({shown}), so each would step its own center with the "
            "others' fitness; build the model alike on every rank (torch.manual_seed(s) before creating it, or load "
            "one state dict on every rank) before the first tell()"
        )
    es._ranks_agree = True
    warn_buffers_apart(es)


def warn_buffers_apart(es: FlipES) -> None:
    """Warn (rank 0) where the processes' buffers differ at the check of their parameters: a buffer the forward
    updates from its inputs (a running mean of one's own) has seen only each rank's members, so each rank runs
    its members with other values, silently; flipes.rl.RunningNorm is merged by obs_norm.update(comm=)."""
    buffers = dict(es._module.named_buffers())
    if not buffers:
        return
    views = es.comm.allgather_object(("buffers", [tensors_sha256([b]) for b in buffers.values()]))
    theirs = [dict(zip(buffers, view[1], strict=False)) for view in views]
    differ = [name for name in buffers if len({view.get(name) for view in theirs}) > 1]
    if differ and es.comm.rank == 0:
        warnings.warn(
            f"FlipES: the processes hold different buffers ({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}"
            f") at generation {es.generation}'s tell: a buffer the forward updates from its inputs (a running mean "
            "of one's own) sees only the rank's own members, so each rank runs its members with other values; update "
            "it outside the population from data alike on every rank, or, for observations, hold a "
            "flipes.rl.RunningNorm as the model's obs_norm and merge it with obs_norm.update(comm=es.comm) after tell",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
