"""What a callback sets on the FlipES between generations (``es.weight_decay``, ``es.shaping``) reaches every rank of
``flipes.train``, as the optimizer's settings do: callbacks run on rank 0 alone. Two ranks are played by two threads of
this process exchanging through the ``flipes.dist.Comm`` protocol."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_thread_ranks

import flipes
import flipes.training


def _model(env: Any) -> torch.nn.Module:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():  # no draw of the global generators, which both threads' runs seed
        model.weight.copy_(torch.arange(6.0).view(2, 3) / 10)
        model.bias.fill_(0.5)
    return model


def _fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
    x = torch.linspace(-1, 1, 3).expand(pop.size, 3)
    return -(model(x) - torch.tensor([1.0, -2.0])).square().sum(1)


class Schedule(flipes.Callback):
    """From generation 1 on: z-score shaping and a weight decay growing each generation."""

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if row["generation"] >= 1:
            state.es.shaping = flipes.shaping.z_score
            state.es.weight_decay = 0.1 * row["generation"]


class AtStart(flipes.Callback):
    """From the start (``on_train_start``): z-score shaping and a weight decay of 0.2."""

    def on_train_start(self, state: Any) -> None:
        state.es.shaping = flipes.shaping.z_score
        state.es.weight_decay = 0.2


def _train(out: Path, comm: Any, mode: str, callback: type[flipes.Callback] = Schedule) -> torch.Tensor:
    config = flipes.TrainConfig.for_env(env="none", popsize=8, groups=2, generations=4, comm=mode, out=str(out), seed=0,
                                        progress=False, tensorboard=False, plot=False, check_every=100)  # fmt: skip
    result = flipes.train(config, comm=comm, model=_model, fitness=_fitness, callbacks=[callback()])
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])  # this rank's own (rows carry rank 0's)


@pytest.mark.parametrize(
    ("mode", "callback"),
    [("seeds", Schedule), ("allreduce", Schedule), ("seeds", AtStart)],
    ids=["seeds", "allreduce", "at-start"],
)
def test_a_callbacks_weight_decay_and_shaping_reach_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, callback: type[flipes.Callback]
) -> None:
    """Two ranks (threads) of a run whose callback switches to z-score shaping and a weight decay from generation 1
    (or from the start, in ``on_train_start``): both ranks end on one process's parameters, bit for bit (``seeds``) or
    to rounding (``allreduce``: each rank's share of the gradient is shaped and summed). Rank 0 alone shaping its
    members with the new function went unnoticed under ``allreduce`` (a mix of the two shapings, the same sum on every
    rank)."""
    one = _train(tmp_path / "one", None, mode, callback)
    monkeypatch.setattr(flipes.training, "_one_run_at_a_time", contextlib.nullcontext)  # two "processes" in threads
    results = run_thread_ranks(lambda comm: _train(tmp_path / "two", comm, mode, callback), 2)
    for r, result in enumerate(results):
        if isinstance(result, BaseException):
            raise AssertionError(f"rank {r} failed") from result
    assert not torch.equal(one, torch.cat([p.flatten() for p in _model(None).parameters()]))  # it trained
    for r in range(2):
        if mode == "seeds":
            assert torch.equal(results[r], one), r
        else:
            torch.testing.assert_close(results[r], one, rtol=1e-5, atol=1e-6)


def test_a_callbacks_shaping_that_cannot_reach_the_other_ranks_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lambda set as ``es.shaping`` by rank 0's callback cannot be sent to the other ranks: a UsageError on rank 0
    names it and the fix (a function at a module's top level); one process takes it as before."""

    class Lambda(flipes.Callback):
        def on_generation(self, state: Any, row: dict[str, Any]) -> None:
            state.es.shaping = lambda f: f - f.mean()

    config = flipes.TrainConfig.for_env(env="none", popsize=8, groups=2, generations=2, out=str(tmp_path / "one"),
                                        progress=False, tensorboard=False, plot=False)  # fmt: skip
    assert len(flipes.train(config, model=_model, fitness=_fitness, callbacks=[Lambda()]).metrics) == 2
    monkeypatch.setattr(flipes.training, "_one_run_at_a_time", contextlib.nullcontext)
    errors = run_thread_ranks(
        lambda comm: flipes.train(
            config.replace(out=str(tmp_path / "two")), comm=comm, model=_model, fitness=_fitness, callbacks=[Lambda()]
        ),
        2,
    )
    assert isinstance(errors[0], flipes.UsageError), errors
    assert "a callback set es.shaping = " in str(errors[0]) and "cannot be sent to the other ranks" in str(errors[0])
    assert "assign a function defined at the top level of a module" in str(errors[0])


@pytest.mark.parametrize("hook", ["on_train_start", "on_generation"])
def test_a_callback_replacing_the_optimizer_under_ranks_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str
) -> None:
    """A new ``es.optimizer`` set by rank 0's callback (in ``on_train_start`` or ``on_generation``) is rank 0's alone
    (the others keep theirs, with its state): a UsageError right after the hook names the fix, not the ranks' check
    generations later."""

    class NewOptimizer(flipes.Callback):
        def on_train_start(self, state: Any) -> None:
            if hook == "on_train_start":
                state.es.optimizer = torch.optim.SGD(state.es.params, lr=0.01)

        def on_generation(self, state: Any, row: dict[str, Any]) -> None:
            state.es.optimizer = torch.optim.SGD(state.es.params, lr=0.01)

    config = flipes.TrainConfig.for_env(env="none", popsize=8, groups=2, generations=3, out=str(tmp_path / "two"),
                                        progress=False, tensorboard=False, plot=False)  # fmt: skip
    monkeypatch.setattr(flipes.training, "_one_run_at_a_time", contextlib.nullcontext)
    errors = run_thread_ranks(
        lambda comm: flipes.train(config, comm=comm, model=_model, fitness=_fitness, callbacks=[NewOptimizer()]), 2
    )
    assert isinstance(errors[0], flipes.UsageError), errors
    assert "a callback replaced es.optimizer with a SGD on rank 0 alone" in str(errors[0])
    assert "pass flipes.train(optimizer=...) a function that builds it" in str(errors[0])
