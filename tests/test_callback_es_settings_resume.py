"""What a callback set on the FlipES (``es.weight_decay``, ``es.shaping``) is recorded in the checkpoint and taken back by
a resume, so that the resumed run trains with the settings the run had when it stopped; a shaping that cannot be named
(a lambda) is said in a warning at the resume."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_callbacks_es_settings_ranks import Schedule, _fitness, _model

import flipes

KW = dict(env="none", popsize=8, seed=0, progress=False, tensorboard=False, plot=False, model=_model, fitness=_fitness)


def _params(result: flipes.TrainResult) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


class OnceAtOne(flipes.Callback):
    """After generation 1 alone: z-score shaping and a weight decay of 0.3, which later generations keep."""

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if row["generation"] == 1:
            state.es.shaping = flipes.shaping.z_score
            state.es.weight_decay = 0.3


class LambdaShaping(flipes.Callback):
    """After generation 0: a lambda's shaping, which no checkpoint can name; ``again`` sets it in on_train_start too."""

    def __init__(self, again: bool = False) -> None:
        self.again, self.shaping = again, lambda f: -flipes.shaping.centered_ranks(f)

    def on_train_start(self, state: Any) -> None:
        if self.again and state.es.generation > 0:
            state.es.shaping = self.shaping

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if row["generation"] == 0:
            state.es.shaping = self.shaping


@pytest.mark.parametrize("callback", [OnceAtOne, Schedule], ids=["once", "every-generation"])
def test_a_resume_trains_with_the_shaping_and_weight_decay_a_callback_set(tmp_path: Path, callback: type) -> None:
    """A run whose callback set es.shaping (z-score) and es.weight_decay after generation 1 (once, or again every
    generation), stopped after generation 2 and resumed to 4, ends on the parameters of the run never stopped, bit for
    bit (its first resumed generation trained with the options' centered ranks and no decay before)."""
    straight = _params(flipes.train(out=str(tmp_path / "straight"), generations=4, callbacks=[callback()], **KW))
    flipes.train(out=str(tmp_path / "resumed"), generations=3, callbacks=[callback()], **KW)
    resumed = flipes.train(resume=str(tmp_path / "resumed"), generations=4, callbacks=[callback()], **KW)
    assert resumed.es.shaping is flipes.shaping.z_score and resumed.es.weight_decay == (0.3 if callback is OnceAtOne else 0.1 * 3)
    assert torch.equal(_params(resumed), straight)


def test_a_shaping_a_checkpoint_cannot_name_is_warned_of_at_the_resume(tmp_path: Path) -> None:
    """A callback's lambda shaping cannot be taken back by its name (``module:<lambda>``): the resume warns, naming it,
    the shaping it trains with instead and the fix (set it again in on_train_start); a callback that does so is not
    warned of, and neither is a run whose callbacks set nothing."""
    flipes.train(out=str(tmp_path / "run"), generations=2, callbacks=[LambdaShaping()], **KW)
    with pytest.warns(UserWarning, match="cannot take back") as seen:
        flipes.train(resume=str(tmp_path / "run"), generations=3, callbacks=[LambdaShaping()], **KW)
    said = [str(w.message) for w in seen if "cannot take back" in str(w.message)]
    assert (
        len(said) == 1 and "es.shaping = test_callback_es_settings_resume:LambdaShaping.__init__.<locals>.<lambda>" in (said[0])
    ), said
    assert "flipes.es.shaping:centered_ranks" in said[0] and "on_train_start" in said[0], said
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flipes.train(resume=str(tmp_path / "run"), generations=4, callbacks=[LambdaShaping(again=True)], **KW)
        flipes.train(out=str(tmp_path / "plain"), generations=1, **KW)
        flipes.train(resume=str(tmp_path / "plain"), generations=2, **KW)


class Scaled:
    """A shaping of one's own with state: the centered ranks times the number of generations it shaped (so that a
    fresh one, or one whose state was lost, gives other steps)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return flipes.shaping.centered_ranks(f) * self.calls

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls = state["calls"]


class StatefulShaping(flipes.Callback):
    """After generation 0: a :class:`Scaled` shaping; ``again`` sets a fresh one in on_train_start of a resumed run."""

    def __init__(self, again: bool = True) -> None:
        self.again = again

    def on_train_start(self, state: Any) -> None:
        if self.again and state.es.generation > 0:
            state.es.shaping = Scaled()

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if row["generation"] == 0:
            state.es.shaping = Scaled()


def test_a_shaping_with_state_that_a_callback_set_again_takes_its_saved_state_back(tmp_path: Path) -> None:
    """A callback's shaping with a state_dict (saved with the FlipES) was refused at the resume as a checkpoint that
    "does not fit the model", since the options build the FlipES with centered ranks. Its state now waits for the
    callback's on_train_start: one that sets the shaping again gets the saved state into it, and the run stopped after
    generation 1 and resumed to 4 ends on the parameters of the run never stopped, bit for bit; one that does not set
    it resumes too, warned that it trains with centered ranks."""
    straight = flipes.train(out=str(tmp_path / "straight"), generations=4, callbacks=[StatefulShaping()], **KW)
    flipes.train(out=str(tmp_path / "resumed"), generations=2, callbacks=[StatefulShaping()], **KW)
    resumed = flipes.train(resume=str(tmp_path / "resumed"), generations=4, callbacks=[StatefulShaping()], **KW)
    assert resumed.es.shaping.calls == straight.es.shaping.calls == 3
    assert torch.equal(_params(resumed), _params(straight))
    flipes.train(out=str(tmp_path / "unset"), generations=2, callbacks=[StatefulShaping(again=False)], **KW)
    with pytest.warns(UserWarning, match="cannot take back") as seen:
        unset = flipes.train(resume=str(tmp_path / "unset"), generations=3, callbacks=[StatefulShaping(again=False)], **KW)
    assert unset.es.generation == 3 and any("Scaled" in str(w.message) for w in seen)
