"""A Flipout form of one's own layer, written as the README's recipe says (``FlipoutMixin`` + ``flipout_linear``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flipes
from flipes.nn import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import flipout_linear


class Scaled(torch.nn.Module):
    """A layer flipes has no Flipout form for: its own weight used through F.linear, times a constant."""

    def __init__(self, n_in: int, n_out: int, scale: float = 2.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias, self.scale = torch.nn.Parameter(torch.randn(n_out)), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(x, self.weight, self.bias)


class FlipoutScaled(FlipoutMixin, Scaled):
    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [PerturbedWeight(self.weight, self.bias, self.weight.shape[1], self.weight.shape[0])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise is None:
            return super().forward(x)
        return self.scale * flipout_linear(x, self.weight, self.bias, self.noise[0], type(self).__name__)


@pytest.mark.parametrize(("groups", "noise_rank"), [(1, None), (2, None), (2, 2)])
def test_an_own_flipout_layer_computes_each_members_explicit_weights(groups: int, noise_rank: int | None) -> None:
    """In float64, member n of an own Flipout layer inside flipout(model) computes scale·F.linear(x_n, W̄ + σ·(ε_g ∘
    r_n s_nᵀ), b̄ + σε_b,n) to 1e-12, with ε_g, s_n, r_n read from the layer's noise (its group's ε; a low-rank ε the
    product of its factors); es.member_noise(n) is that very perturbation; flipout keeps the layer's class and reports
    its parameters as flipout; outside the population the model is exactly the plain layers."""
    torch.manual_seed(0)
    model = flipes.flipout(torch.nn.Sequential(FlipoutScaled(3, 4).double(), torch.nn.Tanh()))
    assert type(model[0]) is FlipoutScaled
    assert [row.how for row in flipes.nn.parameter_report(model).rows] == ["flipout", "flipout"]
    es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=0, groups=groups, noise_rank=noise_rank)
    layer, x = model[0], torch.randn(8, 5, 3, dtype=torch.float64)
    with es.population():
        y = layer(x)
        noise = layer.noise[0]
        per_group = 8 // groups
        for n in range(8):
            g = n // per_group
            eps = noise.eps[g] if noise.factors is None else noise.factors[0][g] @ noise.factors[1][g]  # σ included
            delta = eps * torch.outer(noise.r[n], noise.s[n])
            bias = layer.bias + es.member_noise(n)["0.bias"]  # b̄ + σε_b,n as drawn
            torch.testing.assert_close(y[n], 2.0 * F.linear(x[n], layer.weight + delta, bias), rtol=0, atol=1e-12)
            torch.testing.assert_close(es.member_noise(n)["0.weight"], delta, rtol=0, atol=1e-15)
    assert torch.equal(model(x[0]), torch.tanh(2.0 * F.linear(x[0], layer.weight, layer.bias)))
