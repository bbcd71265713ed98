"""A step of es.optimizer outside tell, while .grad still holds tell's -ĝ, is refused: a training framework's
optimizer.step() (Hugging Face's Trainer, a manual-optimization Lightning module) would otherwise apply it twice."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import flipes

N = 8


def _setup(momentum: float = 0.0) -> tuple[nn.Module, flipes.FlipES, torch.Tensor]:
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum))
    return model, es, torch.randn(N, 3)


def _generation(model: nn.Module, es: flipes.FlipES, x: torch.Tensor) -> None:
    with es.population():
        fitness = -(model(x) - 1).pow(2).sum(-1)
    es.tell(fitness)


def _values(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("clip", [False, True])
def test_second_step_after_tell_is_refused_and_moves_nothing(clip: bool) -> None:
    """optimizer.step() after tell (a clip of .grad in between or not) raises naming the fix; the parameters stay as
    tell left them."""
    model, es, x = _setup()
    _generation(model, es, x)
    told = _values(model)
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    with pytest.raises(RuntimeError, match=r"after es\.tell\(\).*twice.*zero_grad\(set_to_none=True\)"):
        es.optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(_values(model), told, strict=True))


def test_zeroed_in_place_grad_with_momentum_is_refused() -> None:
    """zero_grad(set_to_none=False) keeps tell's tensors: SGD's momentum would still step from them, so it is refused."""
    model, es, x = _setup(momentum=0.9)
    _generation(model, es, x)
    model.zero_grad(set_to_none=False)
    with pytest.raises(RuntimeError, match="twice"):
        es.optimizer.step()


def test_framework_loop_with_zero_grad_matches_plain_tell_loop() -> None:
    """Hugging Face Trainer's order (training_step, clip_grad_norm_, optimizer.step, lr_scheduler.step, zero_grad) over
    es.optimizer, with model.zero_grad(set_to_none=True) after tell, gives the parameters of a plain tell loop with the
    same scheduler, bit for bit: the framework's step is a no-op, its scheduler steps once per generation."""
    results = []
    for framework in (False, True):
        model, es, x = _setup(momentum=0.9)
        sched = torch.optim.lr_scheduler.ExponentialLR(es.optimizer, 0.5)
        for _ in range(3):
            _generation(model, es, x)
            if framework:
                model.zero_grad(set_to_none=True)  # the fix the refusal names, in training_step after tell
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                es.optimizer.step()
            sched.step()
            if framework:
                model.zero_grad()
        results.append(_values(model))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_copy_of_flipes_refuses_after_its_own_tell() -> None:
    """A deep copy's optimizer (torch copies no step hooks) is guarded again from the copy's first tell."""
    model, es, x = _setup()
    _generation(model, es, x)
    twin = copy.deepcopy(es)
    _generation(twin.model, twin, x)
    with pytest.raises(RuntimeError, match="twice"):
        twin.optimizer.step()


def test_a_backprop_step_after_zeroing_tells_gradient_in_place_is_taken() -> None:
    """tell, then zero_grad(set_to_none=False), a backward of one's own and optimizer.step() (a hybrid loop's backprop
    step after ES's, momentum on): the step is taken, to the parameters of the same step from .grad set to None before
    the backward, bit for bit; a second step then, with .grad still that backward's, is the loop's own business too."""
    results = []
    for set_to_none in (True, False):
        model, es, x = _setup(momentum=0.9)
        _generation(model, es, x)
        model.zero_grad(set_to_none=set_to_none)
        model(x).pow(2).sum().backward()
        es.optimizer.step()
        _generation(model, es, x)  # the next generation's tell takes over .grad again
        results.append(_values(model))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_a_backward_onto_tells_gradient_then_a_step_is_refused() -> None:
    """A backward after tell without zeroing .grad adds to tell's -ĝ: a step would apply it twice, so it is refused."""
    model, es, x = _setup()
    _generation(model, es, x)
    model(x).pow(2).sum().backward()
    with pytest.raises(RuntimeError, match="twice"):
        es.optimizer.step()
