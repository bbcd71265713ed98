"""Parameters of a per-member module (a ``flipes.nn.Vector``, a norm) read as plain tensors by other code instead of
calling the module: every member would read the mean there, so the population refuses it, as it refuses such reads of a
Flipout layer's weight; a dense module's forward reading its child's parameters (each member's, swapped in) is no
such read."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_members_are_their_plain_copies
from torch import Tensor, nn

import flipes

DT = torch.float64
N = 8


class ReadsTheVector(nn.Module):
    """A Gaussian policy's mean plus its log-std read as ``self.log_std.value`` (the plain-parameter habit), or called as
    the Vector's docs say (``self.log_std(mu)``)."""

    def __init__(self, call: bool) -> None:
        super().__init__()
        self.call = call
        self.mu = nn.Linear(3, 2)
        self.log_std = flipes.nn.Vector(torch.zeros(2))

    def forward(self, x: Tensor) -> Tensor:
        mu = self.mu(x)
        return mu + (self.log_std(mu) if self.call else self.log_std.value).exp()


class ReadsTheNorm(nn.Module):
    """A plain parent that normalizes with its LayerNorm's parameters, ``F.layer_norm(h, ..., ln.weight, ln.bias)``,
    without calling the LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.ln, self.out = nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.layer_norm(self.fc(x), (5,), self.ln.weight, self.ln.bias))


class Gate(nn.Module):
    """A module without Flipout layers (so one per-member module) whose forward reads its child norm's parameters
    itself: each member's, swapped in for its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(5)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 5))

    def forward(self, h: Tensor) -> Tensor:
        return F.layer_norm(h, (5,), self.ln.weight, self.ln.bias) * self.gain


class GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.gate, self.out = nn.Linear(4, 5), Gate(), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.gate(self.fc(x)))


@pytest.mark.parametrize(("make", "name"), [(lambda: ReadsTheVector(call=False), "log_std"), (ReadsTheNorm, "ln")])
def test_a_per_member_modules_parameters_read_directly_and_never_called_is_an_error_naming_the_freeze(
    make: type[nn.Module], name: str
) -> None:
    """A Vector read as ``.value`` and a LayerNorm read through ``F.layer_norm`` by its parent would give every member
    the mean value there (and the ES gradient of those parameters pure noise): the population raises naming the module
    and the ``frozen=[...]`` that fixes it."""
    torch.manual_seed(0)
    model = flipes.flipout(make().to(DT))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, 3 if name == "log_std" else 4, dtype=DT)
    error = rf"never called them \('{name}'\).*every member ran their mean weights.*" + re.escape(f"frozen=['{name}']")
    with pytest.raises(ValueError, match=error):
        with es.population():
            model(x)


@pytest.mark.parametrize("make", [lambda: ReadsTheVector(call=True), GatedMLP])
def test_a_called_vector_and_a_dense_forward_reading_its_childs_parameters_are_each_members_own(make: type[nn.Module]) -> None:
    """The Vector called as ``self.log_std(mu)``, and a per-member module whose forward reads its child norm's
    parameters: no error, and every member's output equals a plain copy of the model with that member's state dict
    (float64, to 1e-12)."""
    torch.manual_seed(0)
    plain = make().to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, 3, 3 if isinstance(plain, ReadsTheVector) else 4, dtype=DT)
    assert_members_are_their_plain_copies(plain, model, es, x)
