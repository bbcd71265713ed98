"""Rank 0 alone under MPI: it runs the set-up's checks and the callbacks, and the other ranks follow it (its
errors, its optimizer settings; the hint where their models part)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flipes import dist
from flipes.errors import UsageError


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


# why ranks may part in flipes.train although every rank runs the same script
CALLBACKS_RANK_0 = (
    "; callbacks run on rank 0 alone: one that changes the model or the FlipES (other than the optimizer's settings, "
    "such as an lr, which reach every rank) changes rank 0's alone"
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
