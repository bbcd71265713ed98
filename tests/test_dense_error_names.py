"""Messages about a module flipes runs per member name the class the user wrote (``Bad``), not the classes made around
it at runtime: flipes' per-member subclass (``PerMemberBad``) or torch's parametrize one (``ParametrizedBad``)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

import flipes


class Bad(nn.Module):
    """Scales 3 features: fails on the 5 a Linear before it gives (a shape mismatch, not vmap's)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Gate(nn.Module):
    """A data-dependent branch (``.item()``): vmap cannot batch it, so it runs member by member."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale if x.sum().item() > -1e9 else x


class Twice(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


def _parametrized(module: nn.Module) -> nn.Module:
    parametrize.register_parametrization(module, "scale", Twice())
    return module


@pytest.mark.parametrize("parametrized", [False, True], ids=["plain", "parametrized"])
def test_a_forward_that_fails_per_member_is_named_by_the_users_class(parametrized: bool) -> None:
    """The error of a forward that fails per member starts with the user's class name and names its path to freeze."""
    bad = _parametrized(Bad()) if parametrized else Bad()
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 5), bad))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    with es.population(), pytest.raises(RuntimeError) as caught:
        model(torch.randn(4, 4))
    assert str(caught.value).startswith("Bad: its forward cannot run per member under torch.func.vmap (")
    assert "frozen=['1']" in str(caught.value)


def test_the_member_by_member_warning_names_the_users_class_of_a_parametrized_module() -> None:
    """A parametrized module vmap cannot batch is warned about once under the user's class name."""
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 5), _parametrized(Gate())))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    with warnings.catch_warnings(record=True) as caught, es.population():
        warnings.simplefilter("always")
        model(torch.randn(4, 4))
    told = [str(w.message) for w in caught if "member by member" in str(w.message)]
    assert len(told) == 1 and told[0].startswith("flipes: Gate's forward cannot run under torch.func.vmap ("), told
