"""A FlipES state saved through DataParallel or DistributedDataParallel (keys ``module.…``) loaded into the unwrapped
model, or the other way round, is refused naming the wrapper's prefix and which side to build, not only torch's list of
missing and unexpected keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flipes


def _es(wrapped: bool) -> flipes.FlipES:
    torch.manual_seed(0)
    net = flipes.flipout(nn.Sequential(nn.Linear(3, 2)))
    return flipes.FlipES(nn.DataParallel(net) if wrapped else net, popsize=4, sigma=0.1, seed=0)


@pytest.mark.parametrize(
    ("saved_wrapped", "says"),
    [
        (True, "its keys start with 'module.', as a DistributedDataParallel or DataParallel wrapper names them"),
        (False, "this model's keys start with 'module.' (a DistributedDataParallel or DataParallel wrapper)"),
    ],
)
def test_a_state_across_a_wrapper_names_the_prefix(saved_wrapped: bool, says: str) -> None:
    """Each direction names the prefix and the side to build; nothing is loaded."""
    state = _es(saved_wrapped).state_dict()
    other = _es(not saved_wrapped)
    before = [p.clone() for p in other.params]
    with pytest.raises(ValueError, match="nothing was loaded") as e:
        other.load_state_dict(state)
    assert says in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, other.params, strict=True))


def test_an_unrelated_model_gets_no_wrapper_hint() -> None:
    """A state of another model altogether says nothing of a wrapper."""
    state = _es(False).state_dict()
    torch.manual_seed(0)
    other = flipes.FlipES(flipes.flipout(nn.Sequential(nn.Linear(3, 4))), popsize=4, sigma=0.1, seed=0)
    with pytest.raises(ValueError, match="nothing was loaded") as e:
        other.load_state_dict(state)
    assert "module." not in str(e.value)
