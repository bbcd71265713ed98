"""What a hyperparameter sweep of many ``flipes.train`` calls in one Python process meets: a run leaves the process's
global state as it found it, trials do not change each other's results, and a Ctrl-C skips a trial promptly."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import flipes

QUIET: dict[str, Any] = {"progress": False, "plot": False, "tensorboard": False}


def make_model(env: object) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    return model(torch.ones(pop.size, 3)).sum(1)


@pytest.mark.parametrize("during", ["callback", "evaluation"])
def test_a_ctrl_c_after_the_fitness_stops_after_that_generation(tmp_path: Path, during: str) -> None:
    """A Ctrl-C during a generation's evaluation or its callbacks (after its fitness) stops the run after that generation,
    as said at once, not after one more: 2 of 6 generations when it comes in generation 1; the checkpoint holds both,
    the signal handlers are the caller's again, and the next trial runs all its generations."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def evaluate(model: nn.Module) -> float:
        if during == "evaluation" and len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        calls.append(1)
        return 0.0

    class CtrlC(flipes.Callback):
        def on_generation(self, state: Any, row: dict) -> None:
            if during == "callback" and row["generation"] == 1:
                signal.raise_signal(signal.SIGINT)

    calls: list[int] = []
    options = {"env": "none", "model": make_model, "fitness": fitness, "evaluate": evaluate, "popsize": 4, "eval_every": 1,
               "checkpoint_every": 1, **QUIET}  # fmt: skip
    result = flipes.train(generations=6, out=str(tmp_path / "a"), callbacks=[CtrlC()], **options)
    assert result.reason == "interrupted" and [row["generation"] for row in result.metrics] == [0, 1]
    assert flipes.load_checkpoint(tmp_path / "a")["es"]["generation"] == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous
    calls.clear()
    during = "never"
    assert flipes.train(generations=3, out=str(tmp_path / "b"), **options).reason == "generations"
