"""A callback may read ``state.config`` but not change it: every rank's loop reads its own copy of the options while
rank 0 alone runs callbacks, so a change would part rank 0 from the others (a job that waits until --mpi-timeout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import flipes


def _fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
    return -model(torch.ones(pop.size, 2)).square().sum(1)


def _model(env: Any) -> torch.nn.Module:
    return torch.nn.Linear(2, 1)


class _Change(flipes.Callback):
    def __init__(self, hook: str, change: Any) -> None:
        self.hook, self.change, self.seen = hook, change, 0

    def on_train_start(self, state: Any) -> None:
        if self.hook == "on_train_start":
            self.change(state)

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        self.seen += 1
        if self.hook == "on_generation" and row["generation"] == 1:
            self.change(state)


def _train(tmp_path: Path, cb: flipes.Callback) -> flipes.TrainResult:
    return flipes.train(env="none", model=_model, fitness=_fitness, popsize=4, generations=4, out=str(tmp_path / "run"),
                        progress=False, tensorboard=False, plot=False, callbacks=[cb], seed=0)  # fmt: skip


def _shorter(state: Any) -> None:
    state.config.generations = 2


def _replaced(state: Any) -> None:
    state.config = state.config.replace(check_every=1)


def _nested(state: Any) -> None:
    state.config.env_kwargs["g_range"] = [8.0, 12.0]


def _array(state: Any) -> None:  # whose == is elementwise: no truth value to compare by
    state.config.hidden = np.array([8, 8])


@pytest.mark.parametrize(
    ("hook", "change", "said"),
    [
        ("on_generation", _shorter, "_Change.on_generation of generation 1 changed state.config.generations (4 -> 2)"),
        ("on_train_start", _shorter, "_Change.on_train_start changed state.config.generations (4 -> 2)"),
        ("on_generation", _replaced, "_Change.on_generation of generation 1 changed state.config.check_every (10 -> 1)"),
        ("on_generation", _nested, "changed state.config.env_kwargs ({} -> {'g_range': [8.0, 12.0]})"),
        ("on_generation", _array, "changed state.config.hidden ([32, 32] -> array([8, 8]))"),
    ],
)
def test_a_callback_changing_the_config_is_refused_naming_the_hook_and_option(
    tmp_path: Path, hook: str, change: Any, said: str
) -> None:
    """A change to ``state.config`` in place, nested, or by replacing it, in ``on_train_start`` or ``on_generation``,
    raises a UsageError right after that hook naming the callback, the hook and the option with its old and new value,
    and the way to stop early; the run goes no further (no generation after the change's)."""
    cb = _Change(hook, change)
    with pytest.raises(flipes.UsageError, match="callbacks: ") as e:
        _train(tmp_path, cb)
    assert said in str(e.value), str(e.value)
    assert "return True from on_generation to stop early" in str(e.value)
    assert cb.seen == (2 if hook == "on_generation" else 0)


def test_a_callback_reading_the_config_and_stopping_runs_as_before(tmp_path: Path) -> None:
    """A callback that reads the config and stops by returning True is not refused: the run stops after its row."""

    class Stop(flipes.Callback):
        def on_generation(self, state: Any, row: dict[str, Any]) -> bool:
            return row["generation"] + 2 >= state.config.generations

    result = _train(tmp_path, Stop())
    assert result.reason == "stopped by a callback" and len(result.metrics) == 3
