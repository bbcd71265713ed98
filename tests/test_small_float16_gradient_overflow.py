"""A float16 model whose ES gradient (summed in float32) exceeds float16's largest number 65504, as raw shaping of a
fitness of scale 1e5 gives: ``tell`` raises before the optimizer steps, naming the fix, instead of writing an inf
``.grad`` that steps the parameters to inf or NaN; the parameters are unchanged and a tell with rank shaping goes on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flipes
from flipes.optim import ClipUp


def _es(scale: float) -> tuple[flipes.FlipES, torch.Tensor]:
    """A float16 FlipES after its first population under raw shaping, and that population's fitness times ``scale``."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Linear(3, 2)).half()
    es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=0, shaping=flipes.shaping.raw, optimizer=lambda p: ClipUp(p, lr=0.01))
    with es.population():
        fitness = model(torch.randn(8, 3).half()).float().sum(-1) * scale
    return es, fitness


def test_a_float16_gradient_past_its_range_raises_before_the_step() -> None:
    """At fitness scale 1e5 the gradient's largest entry (1.2e5) is past 65504: OverflowError naming rank shaping and
    float32 parameters; the parameters equal those before, with no .grad; the same fitness told again under
    centered-rank shaping steps them to finite values."""
    es, fitness = _es(1e5)
    before = [p.detach().clone() for p in es.params]
    with pytest.raises(OverflowError, match=r"past float16's largest number 65504.*centered_ranks.*float32") as raised:
        es.tell(fitness)
    assert "weight" in str(raised.value)
    assert all(torch.equal(p, b) for p, b in zip(es.params, before, strict=True))
    assert all(p.grad is None for p in es.params) and es.generation == 0
    es.shaping = flipes.shaping.centered_ranks
    es.tell(fitness)
    assert es.generation == 1
    assert all(bool(p.isfinite().all()) and not torch.equal(p, b) for p, b in zip(es.params, before, strict=True))


def test_a_float16_gradient_in_range_steps_as_before() -> None:
    """At fitness scale 1e3 (gradient ~1e3) the float16 parameters step to finite values, as they did before the check."""
    es, fitness = _es(1e3)
    stats = es.tell(fitness)
    assert es.generation == 1 and all(bool(p.isfinite().all()) for p in es.params)
    assert 0 < stats["update_ratio"] < 1
