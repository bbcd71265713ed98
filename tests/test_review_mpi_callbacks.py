"""Review tests of the MPI error exchange, the callbacks' es_settings in checkpoints and the backprop-step hook: each
property here was left unchecked by the tests beside them (a hand mutation of the library went unnoticed)."""

from __future__ import annotations

import gc

import pytest
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


def test_a_step_after_zeroing_only_some_of_tells_gradients_is_refused() -> None:
    """tell, zero_grad(set_to_none=False) of the last layer alone, a backward through the whole model: the first layer's
    .grad is still tell's -ĝ (plus the backward's), so a step would apply -ĝ to it twice; it is refused, and moves
    nothing."""
    model, es, x = _setup()
    _generation(model, es, x)
    model[2].zero_grad(set_to_none=False)
    model(x).pow(2).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="twice"):
        es.optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
