"""Properties where independent parts meet: flipes' seeding of the global generators and the caller's own draws,
FlipES's keyword check and subclasses or copies, the key and shape check of a state and compiled or tied models."""

from __future__ import annotations

import copy
import inspect
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST_KW
from torch import nn

import flipes
from flipes.callbacks import Callback


class _Draws(Callback):
    """Draws one number from each global generator (torch's, NumPy's, Python's) after every generation."""

    def __init__(self) -> None:
        self.draws: list[tuple[float, float, float]] = []

    def on_generation(self, state: object, row: dict) -> None:
        self.draws.append((torch.rand(1).item(), float(np.random.rand()), random.random()))


def test_a_callbacks_global_draws_continue_the_callers_streams_through_training(tmp_path: Path) -> None:
    """flipes seeds the global generators around the model's build, the fitness and tell, and restores them after:
    a callback drawing from torch's, NumPy's and Python's generators gets exactly the numbers those streams give
    from the caller's states at ``flipes.train``, as if nothing else drew from them."""
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    callback = _Draws()
    flipes.train(**FAST_KW, generations=3, out=str(tmp_path / "run"), callbacks=[callback])
    torch.set_rng_state(states[0]), np.random.set_state(states[1]), random.setstate(states[2])
    expected = [(torch.rand(1).item(), float(np.random.rand()), random.random()) for _ in range(3)]
    assert callback.draws == expected


class _PortedES(flipes.FlipES):
    """A subclass taking evosax's names itself: FlipES's check of other libraries' keywords reads its ``__init__``."""

    def __init__(self, model: nn.Module, popsize: int, sigma_init: float = 0.1, lrate_init: float = 0.01) -> None:
        super().__init__(model, popsize, sigma=sigma_init, lr=lrate_init)


def test_a_subclass_taking_other_libraries_names_builds_pickles_and_copies() -> None:
    """A FlipES subclass whose ``__init__`` takes ``sigma_init=`` and ``lrate_init=`` is built with them (not refused
    as evosax's names), and its pickle and deep copy keep its class and settings; its signature is its own."""
    es = _PortedES(flipes.flipout(nn.Linear(3, 2)), 8, sigma_init=0.2, lrate_init=0.05)
    assert es.optimizer.param_groups[0]["lr"] == 0.05
    for twin in (pickle.loads(pickle.dumps(es)), copy.deepcopy(es)):
        assert type(twin) is _PortedES and twin.optimizer.param_groups[0]["lr"] == 0.05
    assert list(inspect.signature(_PortedES).parameters) == ["model", "popsize", "sigma_init", "lrate_init"]


def _mlp() -> nn.Module:
    return flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))


class _Tied(nn.Module):
    """An embedding and an output layer sharing one weight (a language model's tied head)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


@pytest.mark.parametrize(("build", "compile_saved", "compile_loaded"),
                         [(_mlp, True, False), (_mlp, False, True), (lambda: flipes.flipout(_Tied()), False, False)])  # fmt: skip
def test_a_state_loads_across_compiled_and_plain_models_and_tied_weights(
    build, compile_saved: bool, compile_loaded: bool
) -> None:
    """The key and shape check before ``FlipES.load_state_dict`` takes what torch takes: a state of a
    ``torch.compile``-d model loads into the plain one and back (its keys are the model's own, no ``_orig_mod.``), and
    one of tied weights into the same model; the parameters then equal the saved ones exactly."""
    torch.manual_seed(0)
    saved_model = build()
    saved = flipes.FlipES(torch.compile(saved_model) if compile_saved else saved_model, popsize=4, seed=1)
    loaded_model = build()
    loaded = flipes.FlipES(torch.compile(loaded_model) if compile_loaded else loaded_model, popsize=4, seed=1)
    loaded.load_state_dict(saved.state_dict())
    for (name, a), b in zip(saved_model.state_dict().items(), loaded_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
