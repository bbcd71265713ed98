"""An error of rank 0's callbacks (or evaluation) in ``flipes.train`` is raised on every rank: rank 0 alone runs them,
and a script that catches the error on rank 0 (a sweep going on to its next trial) left the other ranks waiting in a
collective until ``--mpi-timeout``, then ending the job, blaming rank 0 as dead. Two ranks are played by two threads."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import run_thread_ranks
from test_callbacks_es_settings_ranks import _fitness, _model

import flipes
import flipes.training


class Fails(flipes.Callback):
    def __init__(self, hook: str, error: Exception) -> None:
        self.hook, self.error = hook, error

    def on_train_start(self, state: Any) -> None:
        if self.hook == "on_train_start":
            raise self.error

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if self.hook == "on_generation" and row["generation"] == 1:
            raise self.error

    def on_train_end(self, state: Any, reason: str) -> None:
        if self.hook == "on_train_end":
            raise self.error


def _two_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str, error: Exception) -> list[BaseException | None]:
    """What each rank's flipes.train raised (None: it returned); a rank left waiting fails at the barrier's timeout."""
    config = flipes.TrainConfig.for_env(env="none", popsize=8, groups=2, generations=3, out=str(tmp_path / "run"),
                                        progress=False, tensorboard=False, plot=False)  # fmt: skip
    monkeypatch.setattr(flipes.training, "_one_run_at_a_time", contextlib.nullcontext)  # two "processes" in threads
    # each rank's script catches the error, as a sweep does, and goes on
    raised = run_thread_ranks(
        lambda comm: flipes.train(config, comm=comm, model=_model, fitness=_fitness, callbacks=[Fails(hook, error)]),
        2,
        timeout=20,
    )
    return [None if isinstance(r, flipes.TrainResult) else r for r in raised]


@pytest.mark.parametrize("hook", ["on_train_start", "on_generation", "on_train_end"])
def test_a_callbacks_error_on_rank_0_is_raised_on_every_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str) -> None:
    """A ValueError of rank 0's callback in each hook: rank 0 raises it, rank 1 (whose copy runs no hook) a RuntimeError
    naming rank 0's error and when, at once, rather than waiting in the collective rank 0 left; neither is a
    BrokenBarrierError (a rank left waiting). The rebuilt error is marked so that, uncaught, rank 0 ends the job first."""
    raised = _two_ranks(tmp_path, monkeypatch, hook, ValueError("bad trial"))
    assert isinstance(raised[0], ValueError) and str(raised[0]) == "bad trial", raised
    assert isinstance(raised[1], RuntimeError) and not isinstance(raised[1], threading.BrokenBarrierError), raised
    when = {"on_train_start": "in on_train_start", "on_generation": "at the end of generation 1",
            "on_train_end": "in on_train_end (stopped: generations)"}[hook]  # fmt: skip
    assert str(raised[1]).startswith(f"rank 0 failed {when}") and "(ValueError: bad trial)" in str(raised[1]), raised[1]
    assert raised[1].flipes_from_rank_0 is True


def test_a_usage_error_of_rank_0s_callback_is_the_same_usage_error_on_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flipes.UsageError raised by rank 0's callback comes back on rank 1 as the same UsageError (option, problem and
    fix), so that a script catching UsageError goes on alike on each rank."""
    error = flipes.UsageError("--my-option", "is wrong", "fix it")
    raised = _two_ranks(tmp_path, monkeypatch, "on_generation", error)
    assert raised[0] is error
    assert isinstance(raised[1], flipes.UsageError), raised
    assert (raised[1].option, raised[1].problem, raised[1].fix) == ("--my-option", "is wrong", "fix it")
