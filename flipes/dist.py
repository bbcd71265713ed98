"""Communication between ES workers. The serial stand-in lives here; MPI arrives with mpi4py.

This is the only module of flipes that may import mpi4py, and only lazily.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Comm(Protocol):
    rank: int
    size: int

    def allgather_tensor(self, x: Tensor) -> Tensor:
        """Concatenate every rank's ``x`` along dim 0, in rank order."""
        ...

    def allreduce_sum_(self, x: Tensor) -> Tensor:
        """Sum ``x`` over ranks, in place."""
        ...


class SerialComm:
    """A communicator of one process: every collective is the identity."""

    rank = 0
    size = 1

    def allgather_tensor(self, x: Tensor) -> Tensor:
        return x

    def allreduce_sum_(self, x: Tensor) -> Tensor:
        return x


def split_groups(groups: int, rank: int, size: int) -> range:
    """Contiguous block of ε groups that ``rank`` evaluates (deterministic, balanced)."""
    if groups < size:
        raise ValueError(f"{groups} groups cannot be shared by {size} processes; use groups >= number of processes")
    lo = rank * groups // size
    return range(lo, (rank + 1) * groups // size)
