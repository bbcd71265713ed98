"""Flipout layers against the math of DESIGN.md at the edges: empty example batches, and the ES estimate's mean."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flipes

N = 4


@pytest.mark.parametrize("rank", [None, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("grad", [False, True])
def test_an_empty_batch_of_examples_per_member_gives_an_empty_output(rank: int | None, groups: int, grad: bool) -> None:
    """``(N, 0, in)`` and ``(N, 2, 0, in)`` inputs (no examples per member) give ``(N, 0, out)`` and ``(N, 2, 0, out)``
    as ``nn.Linear`` does for an empty batch, full-rank or low-rank noise, with or without autograd; a cell, attention
    and a converted norm on top of it too (full-rank noise raised a bare reshape error)."""
    lin = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(lin, popsize=N, sigma=0.1, noise_rank=rank, groups=groups)
    with es.population(), torch.set_grad_enabled(grad):
        assert lin(torch.randn(N, 0, 3)).shape == (N, 0, 2)
        assert lin(torch.randn(N, 2, 0, 3)).shape == (N, 2, 0, 2)
    cell = flipes.flipout(nn.LSTMCell(3, 2))
    attn = flipes.flipout(nn.MultiheadAttention(4, 2, batch_first=True))
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    for m in (cell, attn, model):
        es = flipes.FlipES(m, popsize=N, sigma=0.1, noise_rank=rank, groups=groups)
        with es.population(), torch.set_grad_enabled(grad):
            if m is cell:
                assert [t.shape for t in cell(torch.randn(N, 0, 3))] == [(N, 0, 2)] * 2
            elif m is attn:
                x = torch.randn(N, 0, 4)
                assert attn(x, x, x, need_weights=False)[0].shape == (N, 0, 4)
            else:
                assert model(torch.randn(N, 0, 3)).shape == (N, 0, 3)


def test_an_input_of_no_features_is_not_told_to_flatten_its_examples() -> None:
    """``(N, B, 0)`` fed to a layer of 3 features is refused naming the sizes, not with the hint for examples
    flattened into the features (0 is a multiple of every size)."""
    lin = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(lin, popsize=N, sigma=0.1)
    with es.population(), pytest.raises(ValueError, match=r"has 0 features, the layer takes 3; give it") as info:
        lin(torch.randn(N, 2, 0))
    assert "flatten" not in str(info.value)


class QuadraticProblem(nn.Module):
    """Three Flipout forms side by side, each fed its own fixed input; every output is linear in its layer's
    parameters, so a squared error of the outputs is a quadratic fitness of θ."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1, padding_mode="circular", groups=2, dtype=torch.float64)
        self.linear = nn.Linear(5, 3, dtype=torch.float64)
        self.emb = nn.Embedding(7, 3, padding_idx=0, dtype=torch.float64)
        gen = torch.Generator().manual_seed(5)
        self.register_buffer("xc", torch.randn(1, 4, 5, generator=gen, dtype=torch.float64))
        self.register_buffer("xl", torch.randn(1, 2, 5, generator=gen, dtype=torch.float64))
        self.register_buffer("ids", torch.tensor([[0, 3, 3, 6]]))

    def forward(self, members: int) -> torch.Tensor:
        """Each member's fitness ``-Σ (out - 1)²``, ``(members,)``."""
        outs = (self.conv(self.xc.expand(members, -1, -1)), self.linear(self.xl.expand(members, -1, -1)), self.emb(self.ids))
        return -sum((o - 1).square().flatten(1).sum(1) for o in outs)


@pytest.mark.parametrize("mirrored,groups", [(False, 1), (True, 2)])
def test_the_es_gradient_of_a_quadratic_fitness_read_through_the_forward_pass_is_unbiased(mirrored: bool, groups: int) -> None:
    """Flipout's u_n = ε ∘ r_n s_nᵀ is exactly N(0, I) for each member, so for a quadratic F the ES estimate
    ĝ = Σ_n F(θ + σu_n) u_n / (Nσ) has mean ∇F(θ) (Gaussian smoothing shifts a quadratic by a constant), whatever the
    pseudo-independence of the members. With fitness read off the members' forward passes of a grouped circular
    conv, a linear layer and an embedding with a padding row (its gradient is 0 there), two ε groups or one, mirrored
    or not, the mean of 600 estimates is within Φ⁻¹(1 − 1e-3 / 2d) of its standard errors of the autograd gradient in
    each of the d coordinates (Bonferroni: false-alarm rate 1e-3 under the CLT; fixed seeds, so deterministic). A forward
    pairing member n's fitness with another member's noise, or a gradient off by a factor, fails by many errors."""
    torch.manual_seed(0)
    model = flipes.flipout(QuadraticProblem())
    es = flipes.FlipES(model, popsize=16, sigma=0.1, seed=4, groups=groups, mirrored=mirrored, shaping=flipes.shaping.raw, lr=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    base = model(1)[0]
    target = torch.cat([g.flatten() for g in torch.autograd.grad(base, params)])
    trials, grads = 600, []
    with torch.no_grad():
        for _ in range(trials):
            with es.population() as pop:
                fitness = model(pop.size) - base  # a baseline: E[u] = 0 keeps ĝ unbiased, at less variance
            es.tell(fitness)
            grads.append(-torch.cat([p.grad.flatten() for p in params]))
    g = torch.stack(grads)
    se = g.std(0) / trials**0.5
    fixed = se == 0  # the embedding's padding row is never perturbed: its estimate and its gradient are 0
    assert torch.equal(g[:, fixed], torch.zeros_like(g[:, fixed])) and torch.equal(target[fixed], torch.zeros_like(target[fixed]))
    z = (g.mean(0) - target)[~fixed] / se[~fixed]
    bound = -torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1e-3 / (2 * z.numel()))).item()
    assert z.abs().max().item() < bound, (z.abs().max().item(), bound)
