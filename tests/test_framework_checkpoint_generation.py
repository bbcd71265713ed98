"""A framework's checkpoint of the model and optimizer alone (Lightning's, Hugging Face Trainer's) resumed into a fresh
FlipES of the same seed is refused at population(): it would draw generation 0's noise again. Resuming with
es.load_state_dict, in either order with the framework's own optimizer load, continues as the unstopped run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import flipes

X = torch.randn(8, 3, generator=torch.Generator().manual_seed(5))


def _build(seed: int = 1) -> tuple[nn.Module, flipes.FlipES]:
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    return model, flipes.FlipES(model, popsize=8, sigma=0.1, seed=seed)


def _generations(model: nn.Module, es: flipes.FlipES, n: int) -> None:
    for _ in range(n):
        with es.population():
            fitness = -(model(X) - 1).pow(2).sum(-1)
        es.tell(fitness)


def _checkpoint(model: nn.Module, es: flipes.FlipES) -> dict:
    return copy.deepcopy({"model": model.state_dict(), "optimizer": es.optimizer.state_dict(), "flipes": es.state_dict()})


def test_model_and_optimizer_alone_resumed_into_generation_zero_is_refused() -> None:
    """The optimizer's state of generation 2, loaded into a fresh FlipES of the same seed, raises at population() naming
    es.load_state_dict; the model's parameters are untouched by the refused generation."""
    model, es = _build()
    _generations(model, es, 2)
    saved = _checkpoint(model, es)
    model2, es2 = _build()
    model2.load_state_dict(saved["model"])
    es2.optimizer.load_state_dict(saved["optimizer"])
    with pytest.raises(RuntimeError, match=r"generation 2 of a run of seed 1.*generation 0.*es\.load_state_dict"):
        with es2.population():
            pass
    assert all(torch.equal(a, b) for a, b in zip(model2.state_dict().values(), saved["model"].values(), strict=True))


@pytest.mark.parametrize("framework_first", [False, True])
def test_resume_with_es_state_matches_the_unstopped_run(framework_first: bool) -> None:
    """es.load_state_dict before (Lightning's on_load_checkpoint) or after (a Trainer callback) the framework's own
    model and optimizer loads: 2 more generations give the unstopped run's parameters bit for bit."""
    model, es = _build()
    _generations(model, es, 2)
    saved = _checkpoint(model, es)
    _generations(model, es, 2)
    model2, es2 = _build()
    loads = [lambda: es2.load_state_dict(saved["flipes"]), lambda: model2.load_state_dict(saved["model"])]
    loads.append(lambda: es2.optimizer.load_state_dict(saved["optimizer"]))
    for load in loads[1:] + loads[:1] if framework_first else loads:
        load()
    _generations(model2, es2, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))


def test_restart_with_a_new_seed_takes_the_old_optimizer_state() -> None:
    """The README's restart: a new FlipES of another seed given the old optimizer's state runs (no refusal)."""
    model, es = _build()
    _generations(model, es, 2)
    model2, es2 = _build(seed=2)
    es2.optimizer.load_state_dict(es.optimizer.state_dict())
    _generations(model2, es2, 1)
    assert es2.generation == 1
