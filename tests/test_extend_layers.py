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


class FlipoutBilinear(FlipoutMixin, torch.nn.Bilinear):
    """nn.Bilinear's weight (out, in1, in2) perturbed with one sign per member and in1 feature (broadcast over in2, the
    layout of a conv's kernel) and per output, its forward written from the noise's fields (flipes.noise.SlotNoise)."""

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [PerturbedWeight(self.weight, self.bias, self.in1_features, self.out_features)]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.noise is None:
            return super().forward(x1, x2)
        noise = self.noise[0]
        n, g, lead = noise.size, noise.groups, [1] * (x1.dim() - 2)
        mean = F.bilinear(x1, x2, self.weight, self.bias)
        xs = (x1 * noise.s.view(n, *lead, -1)).reshape(g, n // g, *x1.shape[1:])  # members of a group contiguous
        eps = noise.eps if noise.factors is None else torch.einsum("gor,grij->goij", *noise.factors)  # σ included
        delta = torch.einsum("gm...i,gm...j,goij->gm...o", xs, x2.reshape(g, n // g, *x2.shape[1:]), eps).reshape(mean.shape)
        return mean + (delta + noise.bias_r.view(n, *lead, -1)) * noise.r.view(n, *lead, -1)


@pytest.mark.parametrize(("groups", "noise_rank"), [(1, None), (2, None), (2, 2)])
def test_an_own_flipout_bilinear_layer_is_each_members_bilinear_and_tell_the_explicit_estimator(groups, noise_rank) -> None:
    """A Flipout form of nn.Bilinear written from the noise's fields: in float64 member n computes F.bilinear with
    es.member_parameters(n) to 1e-12, and tell's gradient (identity shaping) is -Σ f_n σu_n / (N σ²) of the members'
    es.member_noise to 1e-12: flipes' sampling and gradient serve a 3-D weight of one's own as a conv kernel."""
    torch.manual_seed(0)
    layer = FlipoutBilinear(3, 5, 4).double()
    es = flipes.FlipES(
        layer, popsize=8, sigma=0.1, seed=0, groups=groups, noise_rank=noise_rank, shaping=lambda f: f,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
    )  # fmt: skip
    x1, x2 = torch.randn(8, 6, 3, dtype=torch.float64), torch.randn(8, 6, 5, dtype=torch.float64)
    f = torch.randn(8, dtype=torch.float64)
    with es.population():
        y = layer(x1, x2)
        for n in range(8):
            expected = F.bilinear(x1[n], x2[n], *es.member_parameters(n).values())
            torch.testing.assert_close(y[n], expected, rtol=0, atol=1e-12)
        deltas = [es.member_noise(n) for n in range(8)]
    es.tell(f)
    for name, p in layer.named_parameters():
        estimator = -sum(f[n] * deltas[n][name] for n in range(8)) / (8 * 0.1**2)
        torch.testing.assert_close(p.grad, estimator, rtol=0, atol=1e-12)
