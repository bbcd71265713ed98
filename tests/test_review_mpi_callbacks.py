"""Review tests of the MPI error exchange, the callbacks' es_settings in checkpoints and the backprop-step hook: each
property here was left unchecked by the tests beside them (a hand mutation of the library went unnoticed)."""

from __future__ import annotations

import gc

import torch
from test_framework_steps_stale_grad import _generation, _setup

import flipes


def test_the_backward_hooks_of_a_flipes_that_is_gone_are_removed() -> None:
    """A model told by one FlipES after another (a sweep's trials, restarts in a notebook) keeps one backward hook per
    parameter for a FlipES that is alive, not one more per FlipES ever built: a hook of a FlipES that is gone would
    run at every backward of the model, forever."""
    model, es, x = _setup()
    _generation(model, es, x)
    for seed in range(5):
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=seed, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
        _generation(model, es, x)
    gc.collect()
    assert [len(p._backward_hooks or {}) for p in model.parameters()] == [1] * 4
    del es
    gc.collect()
    assert [len(p._backward_hooks or {}) for p in model.parameters()] == [0] * 4
