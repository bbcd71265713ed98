"""Calls of ``flipes.train`` made again from the same line (a notebook's cell run again, a loop of trials) each show
the warnings their runs raise: Python's registry of warnings shown, keyed by the caller's line, would say each once
per process."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

import flipes


def make_model(env: object) -> nn.Module:
    return nn.Linear(3, 2)


def tied(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    """Every member the same fitness: the mistake EqualFitnessWarning is there for."""
    return torch.zeros(pop.size)


def test_a_warning_of_a_run_is_shown_again_by_the_same_call_made_again(tmp_path: Path) -> None:
    """Under Python's default action (once per place), two runs from one line with a fitness that ties every member
    each show EqualFitnessWarning once (its generation-0 message is the same both times)."""
    counts = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        for run in range(2):
            flipes.train(env="none", model=make_model, fitness=tied, popsize=4, generations=1, out=tmp_path / str(run),
                         tensorboard=False, plot=False, progress=False)  # fmt: skip
            counts.append(sum(issubclass(w.category, flipes.EqualFitnessWarning) for w in seen))
    assert counts == [1, 2]
