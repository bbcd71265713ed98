"""A framework's checkpoint of the model and optimizer alone (Lightning's, Hugging Face Trainer's) resumed into a fresh
FlipES of the same seed is refused at population(): it would draw generation 0's noise again. Resuming with
es.load_state_dict, in either order with the framework's own optimizer load, continues as the unstopped run.

es.optimizer.state_dict() records the seed and the generation its state is ready for (under "flipes"), whichever way
the FlipES and its optimizer came to be: built, told, given a new optimizer, loaded (a framework's load of the optimizer
alone, es.load_state_dict of a checkpoint with or without the record), copied or unpickled."""

from __future__ import annotations

import copy
import pickle

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


def _mark(es: flipes.FlipES) -> object:
    return es.optimizer.state_dict().get("flipes")


def _unmarked(state: dict) -> dict:
    """``state`` (an ``es.state_dict()``) as flipes wrote it before the optimizer's record existed."""
    state = copy.deepcopy(state)
    del state["optimizer"]["flipes"]
    return state


def test_the_record_follows_the_run_through_builds_tells_loads_and_copies() -> None:
    """Built: generation 0; after 2 tells: 2; a new es.optimizer: 2; a fresh FlipES's optimizer loaded with that state
    alone: 2 (its state_dict() gives back what it was loaded with); es.load_state_dict of a checkpoint without the
    record: the FlipES's generation, 2; a deep copy and an unpickled FlipES: 2."""
    model, es = _build()
    assert _mark(es) == {"seed": 1, "generation": 0}
    _generations(model, es, 2)
    assert _mark(es) == {"seed": 1, "generation": 2}
    es.optimizer = torch.optim.Adam(es.params, lr=0.01)
    assert _mark(es) == {"seed": 1, "generation": 2}
    _, alone = _build()
    alone.optimizer.load_state_dict(es.optimizer.state_dict())
    assert _mark(alone) == {"seed": 1, "generation": 2}
    _, old = _build()
    old.load_state_dict(_unmarked(es.state_dict()))
    assert old.generation == 2 and _mark(old) == {"seed": 1, "generation": 2}
    assert _mark(copy.deepcopy(es)) == {"seed": 1, "generation": 2}
    assert _mark(pickle.loads(pickle.dumps(es))) == {"seed": 1, "generation": 2}


def test_an_unrecorded_state_loaded_after_a_recorded_one_is_not_refused() -> None:
    """The optimizer loaded with generation 2's recorded state and then with a state carrying no record (an older
    flipes's, a plain optimizer's) runs its population: the refusal is of the state it holds, not one it held."""
    model, es = _build()
    _generations(model, es, 2)
    model2, es2 = _build()
    es2.optimizer.load_state_dict(es.optimizer.state_dict())
    es2.optimizer.load_state_dict(_unmarked(es.state_dict())["optimizer"])
    _generations(model2, es2, 1)
    assert es2.generation == 1


def test_a_resume_from_a_checkpoint_without_the_record_saves_one_that_resumes() -> None:
    """es.load_state_dict of a generation-2 checkpoint without the record, saved again at once with the optimizer (a
    framework's checkpoint, e.g. at a preemption before the next tell), resumes through es.load_state_dict and the
    framework's optimizer load as the unstopped run does, bit for bit."""
    model, es = _build()
    _generations(model, es, 2)
    old = _unmarked(es.state_dict())
    _generations(model, es, 1)
    _, es2 = _build()
    es2.load_state_dict(old)
    saved = copy.deepcopy({"flipes": es2.state_dict(), "optimizer": es2.optimizer.state_dict()})
    model3, es3 = _build()
    es3.load_state_dict(saved["flipes"])
    es3.optimizer.load_state_dict(saved["optimizer"])
    _generations(model3, es3, 1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model3.parameters(), strict=True))
