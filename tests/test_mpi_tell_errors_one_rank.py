"""In one's own loop over several ranks, an error that one rank's ``tell`` or ``step`` raises before the fitness exchange
(a fitness of the wrong shape or with NaN, a fitness function that raises) is raised on every rank at once: the failing
rank sends a flag in place of its fitness, so a loop that catches the error goes on alike on every rank instead of
the others waiting in the exchange until ``--mpi-timeout``. Two ranks are played by two threads of this process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import run_thread_ranks

import flipes


def _model() -> torch.nn.Module:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():  # no draw of the global generators, which both threads share
        model.weight.copy_(torch.arange(6.0).view(2, 3) / 10)
        model.bias.fill_(0.5)
    return flipes.flipout(model)


def _fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
    x = torch.linspace(-1, 1, 3).expand(pop.size, 3)
    return -(model(x) - torch.tensor([1.0, -2.0])).square().sum(1)


def _loop(comm: Any, broken: Callable[[torch.nn.Module, Any], torch.Tensor] | None, use_step: bool) -> tuple[list, torch.Tensor]:
    """4 generations of an own loop whose generation 1 is first evaluated with ``broken`` on rank 1 (its error caught,
    the generation evaluated again): each error caught, and the parameters at the end."""
    es = flipes.FlipES(_model(), popsize=8, groups=2, sigma=0.1, lr=0.05, seed=0, comm=comm)
    caught = []
    while es.generation < 4:
        fitness = broken if broken is not None and es.generation == 1 and not caught and comm.rank == 1 else _fitness
        try:
            if use_step:
                es.step(fitness)
            else:
                with es.population() as pop:
                    values = fitness(es.model, pop)
                es.tell(values)
        except Exception as e:
            caught.append(e)
    return caught, torch.cat([p.detach().flatten() for p in es.model.parameters()])


def _raises(model: torch.nn.Module, pop: Any) -> torch.Tensor:
    raise KeyError("no such level")


BROKEN = {
    "wrong shape": (lambda model, pop: _fitness(model, pop)[:-1], False, "fitness has shape (3,)"),
    "NaN": (lambda model, pop: _fitness(model, pop) * torch.nan, False, "4=nan, 5=nan"),
    "step's fitness function raises": (_raises, True, "KeyError: 'no such level'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_error_of_one_ranks_tell_is_raised_on_every_rank_and_the_loop_goes_on(case: str) -> None:
    """Rank 1's error (its own, as raised there) comes back on rank 0 as a RuntimeError naming rank 1, generation 1 and
    the error, never a wait ended by the barrier's timeout (BrokenBarrierError); the generation then evaluated again
    ends both ranks on the parameters of a run where nothing failed (the failed tell stepped nothing)."""
    broken, use_step, said = BROKEN[case]
    clean = run_thread_ranks(lambda comm: _loop(comm, None, use_step), 2, timeout=20)
    ranks = run_thread_ranks(lambda comm: _loop(comm, broken, use_step), 2, timeout=20)
    assert all(isinstance(r, tuple) for r in clean + ranks), clean + ranks
    (caught_0, params_0), (caught_1, params_1) = ranks
    assert len(caught_1) == 1 and said in f"{type(caught_1[0]).__name__}: {caught_1[0]}", caught_1
    assert len(caught_0) == 1 and not isinstance(caught_0[0], threading.BrokenBarrierError), caught_0
    assert isinstance(caught_0[0], RuntimeError), caught_0
    assert str(caught_0[0]).startswith("rank 1 failed in generation 1's fitness ("), caught_0
    assert said in str(caught_0[0])
    assert clean[0][0] == clean[1][0] == []
    assert torch.equal(params_0, params_1) and torch.equal(params_0, clean[0][1]), (params_0, clean[0][1])
