"""An error of the fitness on one rank of ``flipes.train`` is raised on every rank at once: it rides the fitness exchange
every rank is in anyway (a flag in place of the rank's fitness), so a script that catches it (a sweep going on to its
next trial) goes on alike on every rank, rather than the others waiting for that rank's fitness until
``--mpi-timeout``. Two ranks are played by two threads of this process (``helpers.run_thread_ranks``)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_thread_ranks
from test_callbacks_es_settings_ranks import _fitness, _model

import flipes
import flipes.training


def _failing(error: Exception, ranks: tuple[int, ...], generation: int = 1) -> Any:
    def fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
        if pop.generation == generation and pop.members.start // 4 in ranks:  # popsize 8, 2 ranks: 4 members each
            raise error
        return _fitness(model, pop)

    return fitness


def _sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fitness: Any) -> list[Any]:
    """Each rank's script as a sweep's: a trial with ``fitness`` whose error it catches, then a trial that trains to its
    end. Each rank's (error of the first trial, or None, and the second's parameters); a rank left waiting fails at the
    barrier's timeout (BrokenBarrierError)."""
    monkeypatch.setattr(flipes.training, "_one_run_at_a_time", contextlib.nullcontext)  # two "processes" in threads
    kw = dict(env="none", popsize=8, groups=2, generations=3, progress=False, tensorboard=False, plot=False, model=_model)

    def script(comm: Any) -> tuple[BaseException | None, torch.Tensor]:
        raised = None
        try:
            flipes.train(comm=comm, out=str(tmp_path / "failing"), fitness=fitness, **kw)
        except Exception as e:
            raised = e
        result = flipes.train(comm=comm, out=str(tmp_path / "next"), fitness=_fitness, **kw)
        return raised, torch.cat([p.detach().flatten() for p in result.model.parameters()])

    return run_thread_ranks(script, 2, timeout=20)


def test_a_fitness_error_on_rank_1_is_raised_on_every_rank_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ValueError of rank 1's fitness at generation 1: rank 1 raises it, rank 0 a RuntimeError naming rank 1, the
    generation and the error (marked so that, uncaught, rank 1 ends the job first with its traceback), rather than
    waiting in the fitness exchange (a BrokenBarrierError here); both then train the next trial to the same
    parameters."""
    error = ValueError("bad trial")
    ranks = _sweep(tmp_path, monkeypatch, _failing(error, (1,)))
    assert all(isinstance(r, tuple) for r in ranks), ranks
    (raised_0, params_0), (raised_1, params_1) = ranks
    assert raised_1 is error
    assert isinstance(raised_0, RuntimeError) and not isinstance(raised_0, threading.BrokenBarrierError), raised_0
    assert str(raised_0).startswith("rank 1 failed in generation 1's fitness (ValueError: bad trial)"), raised_0
    assert raised_0.flipes_from_rank_0 is True
    assert torch.equal(params_0, params_1)


def test_a_usage_error_of_rank_1s_fitness_is_the_same_usage_error_on_rank_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flipes.UsageError of rank 1's fitness comes back on rank 0 as the same UsageError (option, problem and fix), so
    that a script catching UsageError goes on alike on each rank; its message names rank 1, where the cause is."""
    error = flipes.UsageError("--my-option", "is wrong", "fix it")
    (raised_0, _), (raised_1, _) = _sweep(tmp_path, monkeypatch, _failing(error, (1,)))
    assert raised_1 is error
    assert isinstance(raised_0, flipes.UsageError), raised_0
    assert (raised_0.option, raised_0.problem, raised_0.fix) == ("--my-option", "is wrong", "fix it")
    assert str(raised_0) == "--my-option: is wrong; fix it (on rank 1 of 2)"


def test_fitness_errors_on_every_rank_are_each_ranks_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the fitness raises on both ranks in one generation, each rank raises its own error (it has the traceback),
    not the other's, and both go on to the next trial."""
    errors = [ValueError("rank 0's"), ValueError("rank 1's")]

    def fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
        if pop.generation == 2:
            raise errors[pop.members.start // 4]
        return _fitness(model, pop)

    ranks = _sweep(tmp_path, monkeypatch, fitness)
    assert [r[0] for r in ranks] == errors, ranks
