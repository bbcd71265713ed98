"""Low-rank Flipout (``FlipES(noise_rank=r)``): ε = A Bᵀ/√r per group, sign-flipped per member.

Exactness and the gradient against materialized weights run in test_exactness / test_es for
``rank`` too; here: the structure of the noise and the unbiasedness of the ES gradient.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from helpers import MADE_UP_FITNESS
from torch import nn

import flipes
from flipes.es.shaping import raw
from flipes.nn import FlipoutConv2d, FlipoutLinear


@MADE_UP_FITNESS
def test_group_noise_has_rank_r_and_unit_variance_entries() -> None:
    """With ``noise_rank=r`` (1 and 4) no dense ε is stored, each group's ε = A Bᵀ/√r has matrix rank exactly r,
    and its entries have mean 0 and second moment 1.

    One draw's mean square fluctuates a lot (at r = 1 it is the product of A's and B's mean squares), so the
    moments are tested over T = 320 independent draws (32 groups × 10 generations): the mean over draws of each
    draw's entry mean, and of its entry mean square, against 0 and 1 in units of their standard error over
    draws, |z| < 3.9 (two-sided false-alarm rate 1e-4 for each of the 4 tests under the CLT; fixed seeds). A
    missing 1/√r would make the mean square r: at r = 4, z > 100."""
    layer = FlipoutLinear(30, 20)
    for r in (1, 4):
        es = flipes.FlipES(layer, popsize=64, sigma=0.5, seed=r, groups=32, noise_rank=r)
        means, squares = [], []
        for _ in range(10):
            with es.population():
                noise = layer.noise[0]
            assert noise.eps is None and noise.rank == r
            eps = noise.dense_eps() / 0.5  # (32, 20, 30)
            assert [torch.linalg.matrix_rank(e).item() for e in eps] == [r] * 32
            means.append(eps.mean((1, 2)))
            squares.append(eps.square().mean((1, 2)))
            es.tell(torch.randn(64))
        for draws, expect in ((torch.cat(means), 0.0), (torch.cat(squares), 1.0)):
            z = (draws.mean().item() - expect) / (draws.std().item() / math.sqrt(draws.numel()))
            assert abs(z) < 3.9, (r, expect, z)


def test_conv_low_rank_factors_are_a_kernel_per_rank_channel() -> None:
    """A conv's rank-2 factors have shapes (G, out_channels, r) and (G, r, in_channels, kh, kw): one full kernel per
    rank channel (shapes only)."""
    conv = FlipoutConv2d(3, 5, 3)
    es = flipes.FlipES(conv, popsize=4, noise_rank=2)
    with es.population():
        a, b = conv.noise[0].factors
    assert a.shape == (1, 5, 2) and b.shape == (1, 2, 3, 3, 3)


@MADE_UP_FITNESS
@pytest.mark.parametrize("rank", [None, 1, 4])
def test_es_gradient_is_unbiased_for_a_linear_fitness(rank: int | None) -> None:
    """For F(θ) = c·θ and raw fitness, E[ĝ] = E[(c·u) u] = E[u uᵀ] c = c exactly, at any rank
    (the entries of ε = A Bᵀ/√r are uncorrelated with unit variance).

    The mean of T = 1000 estimates (popsize 96 in 3 groups: 3,000 draws of ε of 32 members each, as 3,000 generations
    of 32 in one group; the per-call overhead, not the population, is the cost) is compared with c coordinate by
    coordinate in units of its own standard error; over d coordinates the Bonferroni bound at false-alarm rate 1e-3 is
    the |z| < Φ⁻¹(1 − 1e-3 / 2d) (fixed seed, so the test is deterministic). A wrong scale (e.g. ε = A Bᵀ without the
    1/√r) would make E[ĝ] = r·c; even A's scale 8% too large (E[ĝ] = 1.17 c) gives max |z| = 5.2 at rank 4 (bound 4.3).
    """
    torch.manual_seed(0)
    model = nn.Sequential(FlipoutLinear(6, 5, dtype=torch.float64), FlipoutLinear(5, 4, dtype=torch.float64))
    sgd0 = lambda p: torch.optim.SGD(p, lr=0.0)  # noqa: E731 (keep θ fixed: ĝ is read from .grad)
    es = flipes.FlipES(
        model, popsize=96, groups=3, sigma=0.1, seed=3, mirrored=True, shaping=raw, optimizer=sgd0, noise_rank=rank
    )
    c = [torch.randn_like(p) for p in es.params]
    trials = 1000
    grads = []
    for _ in range(trials):
        with es.population() as pop:
            members = member_parameters(model, pop.size)  # F(θ_n) = c·θ_n needs no forward pass
        fitness = sum((cp.flatten() * m.flatten(1)).sum(1) for cp, m in zip(c, members, strict=True))
        es.tell(fitness)
        grads.append(-torch.cat([p.grad.flatten() for p in es.params]))
    g = torch.stack(grads)
    target = torch.cat([cp.flatten() for cp in c])
    z = (g.mean(0) - target) / (g.std(0) / math.sqrt(trials))
    d = target.numel()
    bound = -torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1e-3 / (2 * d))).item()
    assert z.abs().max().item() < bound, (z.abs().max().item(), bound)


def member_parameters(model: nn.Module, n: int) -> list[torch.Tensor]:
    """Each member's weights and biases, ``(n, *shape)``, materialized from the layers' noise."""
    out = []
    for layer in model:
        noise = layer.noise[0]
        eps = noise.dense_eps()  # (groups, out, in): each group's ε for its contiguous block of members
        eps = eps.repeat_interleave(n // eps.shape[0], 0)
        out.append(layer.weight + eps * noise.r[:, :, None] * noise.s[:, None, :])
        out.append(layer.bias + noise.bias)
    return out


def test_rank_must_be_a_positive_integer_and_is_part_of_the_configuration() -> None:
    """``noise_rank`` -1, 1.5 and True are ValueErrors naming the value given; 0 is full rank, as the command
    line's --noise-rank 0; a state dict saved with rank 2 is refused by a full-rank FlipES, naming the saved and the
    current rank."""
    layer = FlipoutLinear(3, 2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"rank must be None or 0 .*, got {bad!r}$"):
            flipes.FlipES(layer, popsize=4, noise_rank=bad)
    assert flipes.FlipES(layer, popsize=4, noise_rank=0).noise_rank is None
    state = flipes.FlipES(layer, popsize=4, noise_rank=2).state_dict()
    with pytest.raises(ValueError, match="rank: saved 2, now None"):
        flipes.FlipES(layer, popsize=4).load_state_dict(state)


def test_population_forwards_under_inference_mode_and_no_grad_mix_within_a_generation() -> None:
    """The scratch buffer of x∘s is per mode: an inference tensor cannot be written outside it."""
    layer = FlipoutLinear(6, 5)
    x = torch.randn(8, 6)
    for rank in (None, 2):
        es = flipes.FlipES(layer, popsize=8, noise_rank=rank)
        with torch.inference_mode(), es.population():
            first = layer(x).clone()
        with es.population():
            second = layer(x)
            third = layer(2 * x)  # the buffer is reused: the earlier output must be untouched
        assert torch.equal(first, second) and not torch.equal(second, third)


def test_numpy_integer_ranks_are_accepted() -> None:
    """A numpy integer rank (np.int64(2)) is stored as the Python int 2, samples exactly the noise of noise_rank=2
    (rank-2 factors), and its state dict reads back with ``torch.load(weights_only=True)``, as checkpoints are read,
    into a FlipES made with noise_rank=2."""
    import numpy as np

    noises, states = [], []
    for rank in (np.int64(2), 2):
        torch.manual_seed(0)
        layer = FlipoutLinear(5, 4)
        es = flipes.FlipES(layer, popsize=4, seed=1, noise_rank=rank)
        assert type(es.noise_rank) is int and es.noise_rank == 2
        with es.population():
            noises.append(layer.noise[0])
        buffer = io.BytesIO()
        torch.save(es.state_dict(), buffer)
        states.append(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    a, b = noises
    assert a.rank == 2 and a.factors[0].shape == (1, 4, 2)
    pairs = [*zip(a.factors, b.factors, strict=True), (a.s, b.s), (a.r, b.r), (a.bias_r, b.bias_r)]
    assert all(torch.equal(x, y) for x, y in pairs)
    es.load_state_dict(states[0])  # the last FlipES: noise_rank=2


def test_the_report_calls_flipout_weights_low_rank_and_their_biases_flipout() -> None:
    """With ``noise_rank`` the Flipout weights are ``"low-rank"`` in ``es.report()``; biases keep their
    per-member noise (``"flipout"``) and norms their dense noise."""
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)))
    es = flipes.FlipES(model, popsize=4, noise_rank=2)
    rows = {r.name: r.how for r in es.report().rows}
    assert rows == {"0.weight": "low-rank", "0.bias": "flipout", "1.weight": "dense", "1.bias": "dense"}
    full = {r.name: r.how for r in flipes.FlipES(model, popsize=4).report().rows}
    assert full == {**rows, "0.weight": "flipout"}
