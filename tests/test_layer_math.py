"""Flipout layers against the math of DESIGN.md at the edges: empty example batches, and the ES estimate's mean."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import flipes
from flipes.seeds import t_quantile

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
    or not, the mean of 600 estimates is within Student's t quantile at 1 − 1e-3 / 2d (599 d.o.f.: the standard errors
    are estimated) of its standard errors of the autograd gradient in each of the d coordinates (Bonferroni:
    false-alarm rate 1e-3 under the CLT, where Φ⁻¹ gave 1.2e-3; fixed seeds, so deterministic). A forward
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
    bound = t_quantile(1 - 1e-3 / (2 * z.numel()), trials - 1)
    assert z.abs().max().item() < bound, (z.abs().max().item(), bound)


H = 2
LSTM_1, LSTM_2 = r"hx\[0\] \(h_0\) of shape \(2, 4, 2\), expected \(1, 4, 2\)", r"of shape \(1, 4, 2\), expected \(2, 4, 2\)"
STATE_CASES = [
    (lambda: nn.LSTM(3, H, batch_first=True), lambda: (torch.zeros(2, N, H), torch.zeros(2, N, H)), LSTM_1),
    (lambda: nn.LSTM(3, H, num_layers=2), lambda: (torch.zeros(1, N, H), torch.zeros(1, N, H)), LSTM_2),
    (lambda: nn.GRU(3, H, batch_first=True), lambda: torch.zeros(N, H), r"hx \(h_0\) of shape \(4, 2\), expected \(1, 4, 2\)"),
    (lambda: nn.RNN(3, H, batch_first=True), lambda: torch.zeros(1, 2 * N, H), r"of shape \(1, 8, 2\), expected \(1, 4, 2\)"),
    (lambda: nn.LSTMCell(3, H), lambda: (torch.zeros(N, 3),) * 2, r"hx\[0\] \(h\) of shape \(4, 3\), expected \(4, 2\)"),
    (lambda: nn.GRUCell(3, H), lambda: torch.zeros(N + 1, H), r"hx of shape \(5, 2\), expected \(4, 2\)"),
    (lambda: nn.RNNCell(3, H), lambda: torch.zeros(N, 1, H), r"hx of shape \(4, 1, 2\), expected \(4, 2\)"),
]


def _input(model: nn.Module, features: int) -> torch.Tensor:
    """One input per member: ``(N, T, features)`` batch first, ``(T, N, features)`` else, ``(N, features)`` to a cell."""
    if not isinstance(model, nn.RNNBase):
        return torch.randn(N, features)
    return torch.randn(N, 5, features) if model.batch_first else torch.randn(5, N, features)


@pytest.mark.parametrize("make,state,message", STATE_CASES)
def test_a_hidden_state_of_the_wrong_shape_is_refused_naming_the_expected_shape(
    make: Callable[[], nn.Module], state: Callable[[], object], message: str
) -> None:
    """A recurrent layer or cell given a hidden state of another shape than torch.nn takes (more layers than it has,
    fewer, no layer dim, another batch or hidden size) is a ValueError naming the state and the expected shape, as
    torch.nn refuses it; before, an extra layer was silently ignored and the rest failed as a raw IndexError or
    broadcast error, or as an "input" of the wrong features."""
    model = flipes.flipout(make())
    es = flipes.FlipES(model, popsize=N, sigma=0.1)
    x = _input(model, 3)
    with es.population(), pytest.raises(ValueError, match=message):
        model(x, state())
    with pytest.raises((RuntimeError, ValueError)):  # torch.nn refuses it too
        make()(x, state())


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, H, batch_first=True), lambda: nn.GRUCell(3, H)])
def test_a_recurrent_input_of_other_features_names_input_size(make: Callable[[], nn.Module]) -> None:
    """Inputs of 4 features to a recurrent layer of input_size 3 are refused naming ``input_size``, its own argument
    (not a Linear's ``in_features``)."""
    model = flipes.flipout(make())
    es = flipes.FlipES(model, popsize=N, sigma=0.1)
    with es.population(), pytest.raises(ValueError, match=r"has 4 features, the layer takes input_size=3; build it"):
        model(_input(model, 4))


L, E = 5, 8


def _attention_calls(batch_first: bool) -> list[tuple[Callable[[nn.Module], object], str]]:
    """Calls with inputs nn.MultiheadAttention refuses, each with the words of the refusal."""

    def seq(b: int, length: int = L, e: int = E) -> torch.Tensor:
        return torch.randn(b, length, e) if batch_first else torch.randn(length, b, e)

    x = seq(N)
    return [
        (lambda m: m(x, seq(2 * N), seq(2 * N)), r"same batch .*got 4, 8 and 8"),
        (lambda m: m(x, x, seq(N, L + 1)), r"key and value must have the same length"),
        (lambda m: m(*(seq(N, e=E + 1),) * 3), r"9, 9 and 9 features, the layer takes embed_dim=8"),
        (lambda m: m(x, x, x, attn_mask=torch.zeros(L, L + 1, dtype=torch.bool)), r"attn_mask of shape \(5, 6\)"),
        (lambda m: m(x, x, x, attn_mask=torch.zeros(3 * N, L, L)), r"attn_mask of shape \(12, 5, 5\), expected .*\(8, 5, 5\)"),
        (lambda m: m(x, x, x, key_padding_mask=torch.zeros(N, L + 1, dtype=torch.bool)), r"key_padding_mask of shape"),
    ]


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_refuses_the_inputs_torch_refuses_naming_them(batch_first: bool) -> None:
    """In a population, attention given a key and value of twice the query's batch (which the population forward read
    as two keys per member, silently), key and value of other lengths, inputs of other features, and masks of the wrong
    shape are ValueErrors naming the tensor and the shape expected, as nn.MultiheadAttention refuses them all (before:
    silent, or raw broadcast and bmm errors)."""
    model = flipes.flipout(nn.MultiheadAttention(E, 2, batch_first=batch_first))
    es = flipes.FlipES(model, popsize=N, sigma=0.1)
    for call, message in _attention_calls(batch_first):
        with es.population(), pytest.raises(ValueError, match=message):
            call(model)
        with pytest.raises((AssertionError, RuntimeError)):  # torch.nn's refusal, outside a population
            call(model)
