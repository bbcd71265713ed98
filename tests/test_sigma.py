"""Adaptive σ (``FlipES(sigma_lr=η)``): the log-σ gradient against its explicit formula and against the
analytic derivative (Monte Carlo), σ shrinking where it is too large, no drift without signal, and an
exact resume."""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import FAST_KW, MADE_UP_FITNESS
from reference import centered_ranks_distinct, member_perturbations
from torch import nn

import flipes
from flipes.config import resolve_groups
from flipes.es.shaping import raw

DT = torch.float64


def small_model() -> nn.Module:
    """A Flipout layer with a bias (one σ), and a LayerNorm (dense: one σ for its weight, one for its bias)."""
    torch.manual_seed(0)
    return flipes.flipout(nn.Sequential(nn.Linear(6, 4, dtype=DT), nn.LayerNorm(4, dtype=DT)))


def slot_names(es: flipes.FlipES, model: nn.Module) -> list[list[str]]:
    """The parameter names behind each σ: a Flipout slot's weight and bias, then each dense parameter."""
    names = {id(p): name for name, p in model.named_parameters()}
    slots = [[names[id(p)] for p in (pw.weight, pw.bias) if p is not None] for pw in es.slots]
    return slots + [[names[id(p)]] for _, _, p in es.dense_slots]


def baseline_free(f_hat: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Member by member: ``F̂_n`` minus the mean ``F̂`` of the members outside n's block."""
    return torch.stack([f_hat[n] - f_hat[block != block[n]].mean() for n in range(len(f_hat))])


@MADE_UP_FITNESS
@pytest.mark.filterwarnings("ignore:sigma_lr > 0 with groups=1")  # the formula holds for one group too
@pytest.mark.filterwarnings("ignore::flipes.EqualFitnessWarning")  # a single member's fitness: max = min
@pytest.mark.parametrize(
    "n,mirrored,groups,shaped",
    [
        (16, True, 1, True),
        (16, True, 4, True),
        (16, False, 8, True),
        (16, False, 1, False),
        (7, False, 7, True),
        (1, False, 1, False),
    ],
)
def test_sigma_and_parameter_updates_equal_their_explicit_formulas(n: int, mirrored: bool, groups: int, shaped: bool) -> None:
    """Log σ of each slot moves by η Σ_n c_n (‖z_n‖² - d_part) / (√(2d) N), c the shaped fitness less the mean of the
    members outside n's group (Flipout weight) or pair (bias, dense), and ``.grad`` is -Σ F̂ σ_i u_n / (N σ_i²), from
    the materialized perturbations to float64 rounding; also for an odd population of one member per group and for a
    single member (no other members: c = F̂). Each part (weight, bias, dense parameter) enters with its own
    ``d_part``: with raw fitness and one group the coefficients do not sum to zero, so ``‖z‖² - d_part`` and
    ``‖z‖² - d`` differ."""
    model = small_model()
    eta, sigma = 0.3, 0.2
    es = flipes.FlipES(
        model, popsize=n, sigma=sigma, groups=groups, mirrored=mirrored, sigma_lr=eta,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0), **({} if shaped else {"shaping": raw}),
    )  # fmt: skip
    es.log_sigma += torch.tensor([0.1, -0.2, 0.3])  # a different σ per slot
    sigmas = es.sigmas()
    with es.population():
        deltas = member_perturbations(es, model)
    fitness = torch.randn(n, dtype=DT)
    before = es.log_sigma.clone()
    es.tell(fitness)
    f_hat = centered_ranks_distinct(fitness) if shaped else fitness
    group = torch.arange(n) // (n // groups)
    pair = torch.arange(n) // 2 if mirrored else torch.arange(n)
    by_group = baseline_free(f_hat, group) if groups > 1 else f_hat  # one group: no other members
    by_member = baseline_free(f_hat, pair) if pair.max() > 0 else f_hat  # one pair or member: no other members
    params = dict(model.named_parameters())
    flipout_weight = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, flipes.nn.FlipoutLinear)}
    for i, names in enumerate(slot_names(es, model)):
        d = sum(params[name].numel() for name in names)
        score = torch.zeros((), dtype=DT)
        for name in names:  # Σ_n c_n (‖z_n‖² - d_part) per part, c from the members independent of it
            z2 = deltas[name].flatten(1).square().sum(1) / sigmas[i] ** 2
            c = by_group if name in flipout_weight else by_member
            score += (c * (z2 - params[name].numel())).sum()
        expect = eta * score / (math.sqrt(2 * d) * n)
        torch.testing.assert_close(es.log_sigma[i] - before[i], expect, atol=1e-12, rtol=1e-9)
        for name in names:  # -ĝ = -Σ F̂ (σ_i u_n) / (N σ_i²)
            grad = -(f_hat.view(-1, *(1,) * params[name].dim()) * deltas[name]).sum(0) / (n * sigmas[i] ** 2)
            torch.testing.assert_close(params[name].grad, grad, atol=1e-12, rtol=1e-9)
    with torch.no_grad():
        assert es.report().evolved == sum(p.numel() for p in model.parameters())


class ScaledEmbedding(nn.Embedding):
    """An embedding with a forward of its own: evolved with dense noise."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input) * 2.0


@MADE_UP_FITNESS
@pytest.mark.parametrize("kind", ["flipout", "dense"])
def test_the_padding_row_of_an_embedding_is_not_counted_in_d(kind: str) -> None:
    """An embedding's padding row is never perturbed, so its weight has d = (V - 1)·dim evolved entries:
    log σ moves by η Σ_n c_n (‖z_n‖² - d) / (√(2d) N), c from the other groups' members (a Flipout embedding) or
    from the other mirrored pairs (a dense one); raw fitness, so the c do not sum to zero and d counts."""
    torch.manual_seed(0)
    model = flipes.flipout((nn.Embedding if kind == "flipout" else ScaledEmbedding)(10, 3, padding_idx=4, dtype=DT))
    n, eta, sigma, groups = 16, 0.3, 0.2, 4
    es = flipes.FlipES(
        model, popsize=n, sigma=sigma, groups=groups, sigma_lr=eta, shaping=raw, optimizer=lambda p: torch.optim.SGD(p, lr=0.0)
    )
    with es.population():
        delta = member_perturbations(es, model)["weight"]
    assert torch.equal(delta[:, 4], torch.zeros_like(delta[:, 4]))
    fitness = torch.randn(n, dtype=DT)
    before = es.log_sigma.clone()
    es.tell(fitness)
    block = torch.arange(n) // (n // groups) if kind == "flipout" else torch.arange(n) // 2
    c = baseline_free(fitness, block)
    d = 9 * 3
    z2 = delta.flatten(1).square().sum(1) / sigma**2
    expect = eta * (c * (z2 - d)).sum() / (math.sqrt(2 * d) * n)
    torch.testing.assert_close(es.log_sigma - before, expect.view(1), atol=1e-12, rtol=1e-9)


class Offset(nn.Module):
    """A 0-dim bare parameter (a learned temperature or offset) added to every entry: dense noise, d = 1."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(0.5, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


@MADE_UP_FITNESS
def test_a_zero_dim_parameter_adapts_its_sigma_with_d_one() -> None:
    """A 0-dim parameter (perturbations of shape (N,)) has d = 1: log σ moves by η Σ_n c_n (z_n² - 1) / (√2 N), c
    from the other mirrored pairs' members, and its ``.grad`` is -Σ F_n σu_n / (Nσ²) (raw fitness)."""
    model = flipes.flipout(Offset())
    n, eta, sigma = 8, 0.3, 0.2
    es = flipes.FlipES(model, popsize=n, sigma=sigma, sigma_lr=eta, shaping=raw, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    with es.population():
        delta = member_perturbations(es, model)["offset"]
    assert delta.shape == (n,)
    fitness = torch.randn(n, dtype=DT)
    before = es.log_sigma.clone()
    es.tell(fitness)
    c = baseline_free(fitness, torch.arange(n) // 2)
    expect = eta * (c * ((delta / sigma).square() - 1)).sum() / (math.sqrt(2) * n)
    torch.testing.assert_close(es.log_sigma - before, expect.view(1), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(model.offset.grad, -(fitness * delta).sum() / (n * sigma**2), atol=1e-12, rtol=1e-9)


def test_each_parameter_is_perturbed_at_the_sigma_of_its_own_slot() -> None:
    """With a different σ_i per slot (two Flipout layers, a LayerNorm's two dense parameters), the
    perturbations of slot i have mean square σ_i² per entry: Σ_n ‖σ_i u_n‖² / (N d σ_i²) is within 0.4
    of 1 for each parameter. Its sampling std is at most √(2/512) ≈ 0.063 (the last layer's 8 bias entries × 64
    members), so the bound is ≥ 6.4 standard deviations (false alarm < 1e-8 per parameter: χ²₅₁₂'s upper tail); a
    parameter drawn at another slot's σ is off by a factor e^0.5 or more. Fixed seed."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(16, 24, dtype=DT), nn.LayerNorm(24, dtype=DT), nn.Linear(24, 8, dtype=DT)))
    es = flipes.FlipES(model, popsize=64, sigma=0.1, groups=4, mirrored=False, sigma_lr=0.1, seed=3)
    es.log_sigma += torch.tensor([0.75, -0.75, 0.25, -0.25], dtype=DT)
    sigmas = es.sigmas()
    with es.population():
        deltas = member_perturbations(es, model)
    for i, names in enumerate(slot_names(es, model)):
        for name in names:
            ratio = deltas[name].square().mean() / sigmas[i] ** 2
            assert abs(ratio.item() - 1) < 0.4, (name, sigmas[i], ratio.item())


def centered(fitness: torch.Tensor) -> torch.Tensor:
    return fitness - fitness.mean()


@MADE_UP_FITNESS
@pytest.mark.parametrize("shaping,groups,n,gens", [(raw, 32, 384, 200), (centered, 4, 128, 600)])
def test_the_log_sigma_gradient_is_unbiased_against_the_analytic_derivative(shaping, groups: int, n: int, gens: int) -> None:
    """For F(θ) = -‖θ‖² at θ = 0, E[ĝ_σ] = ∂/∂log σ E[F] / √(2d) = -σ²√(2d) for every layer, with raw
    fitness and with centered fitness (a baseline from the same population, which shares ‖ε_g‖² with
    a group's members: uncorrected, the Flipout layer's mean is 0.76 of it at 4 groups). Mean over 600 generations
    of N = 128 at 4 groups, over 200 of N = 384 at 32 groups (the per-generation cost is mostly per call; the
    standard error is 1.7% of the expectation, 1.9% at 600 of 128), σ kept still by a tiny η; the bound is 4.5
    standard errors of that mean (false alarm ~1e-5 per slot), and the standard error is below 5% of the expectation."""
    model = small_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    eta, sigma = 1e-7, 0.3
    es = flipes.FlipES(
        model, popsize=n, sigma=sigma, groups=groups, shaping=shaping, sigma_lr=eta,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
    )  # fmt: skip
    samples = []
    for _ in range(gens):
        with es.population() as pop:
            deltas = member_perturbations(es, model)
            fitness = -sum(d.flatten(1).square().sum(1) for d in deltas.values())  # -‖θ + σu_n‖² at θ = 0
            assert fitness.shape == (pop.size,)
        before = es.log_sigma.clone()
        es.tell(fitness)
        samples.append((es.log_sigma - before) / eta)
    g = torch.stack(samples)  # (gens, slots)
    mean, se = g.mean(0), g.std(0) / math.sqrt(gens)
    params = dict(model.named_parameters())
    d = torch.tensor([sum(params[name].numel() for name in names) for names in slot_names(es, model)], dtype=DT)
    expect = -(torch.tensor(es.sigmas(), dtype=DT) ** 2) * (2 * d).sqrt()
    assert (se < 0.05 * expect.abs()).all(), (se, expect)
    assert ((mean - expect).abs() < 4.5 * se).all(), (mean, expect, se)


def bowl(es: flipes.FlipES, model: nn.Module, target: torch.Tensor, gens: int) -> tuple[float, list[float]]:
    """ES on F(θ) = -‖θ - target‖²; returns the population's mean loss in the last generation (the loss
    of the search distribution, what ES optimizes: ‖θ̄ - target‖² + σ²·d) and the mean σ per generation."""
    sigmas, loss = [], math.inf
    for _ in range(gens):
        with es.population() as pop:
            x = torch.eye(8, dtype=DT).expand(pop.size, 8, 8)  # the identity: output row i is weight column i
            fitness = -((model(x) - target) ** 2).sum((1, 2))
        stats = es.tell(fitness)
        sigmas.append(stats["sigma"])
        loss = -stats["fitness_mean"]
    return loss, sigmas


def test_sigma_ten_times_too_large_shrinks_and_beats_fixed_sigma() -> None:
    """σ = 0.5 where the target's entries are ~0.1: adaptive σ shrinks it more than 100x and ends with a
    population loss below 1% of fixed σ's (seed 2: 1,000x and 0.075%; the same on seeds 0-3). (The centre itself
    converges as well with fixed σ here: mirrored pairs make its gradient exact on a quadratic for any σ.)"""
    torch.manual_seed(1)
    target = torch.randn(8, 8, dtype=DT) * 0.1
    results = {}
    for eta in (0.0, 0.5):
        model = flipes.flipout(nn.Linear(8, 8, bias=False, dtype=DT))
        with torch.no_grad():
            model.weight.zero_()
        es = flipes.FlipES(model, popsize=128, sigma=0.5, lr=0.02, groups=32, seed=2, sigma_lr=eta)
        results[eta] = bowl(es, model, target, 300)
    fixed_loss, fixed_sigmas = results[0.0]
    loss, sigmas = results[0.5]
    assert fixed_sigmas[-1] == 0.5 and sigmas[-1] < 0.5 / 100, sigmas[::50]  # σ shrank more than 100x
    assert loss < 0.01 * fixed_loss, (loss, fixed_loss)


@MADE_UP_FITNESS
@pytest.mark.filterwarnings("ignore:generation 0. all .* same fitness")  # equal on purpose
def test_sigma_does_not_drift_without_a_signal() -> None:
    """Equal fitness: σ does not move at all. Fitness independent of the parameters (pure noise): the
    increments of log σ are symmetric (a reversed ranking is as likely), so their sum S after T steps
    stays within 5 self-normalized deviations, |S| ≤ 5·sqrt(Σ increments²) (de la Peña's bound for
    symmetric increments: false alarm ≤ 2·exp(-12.5) ≈ 7e-6 per slot); fixed seed."""
    model = small_model()
    es = flipes.FlipES(model, popsize=32, sigma=0.1, groups=8, sigma_lr=0.5)
    start = es.log_sigma.clone()
    for _ in range(5):
        with es.population():
            pass
        es.tell(torch.zeros(32))
    assert torch.equal(es.log_sigma, start)
    gen = torch.Generator().manual_seed(3)
    steps = []
    for _ in range(300):
        with es.population():
            pass
        before = es.log_sigma.clone()
        es.tell(torch.randn(32, generator=gen))
        steps.append(es.log_sigma - before)
    s = torch.stack(steps)
    assert (s.sum(0).abs() <= 5 * s.square().sum(0).sqrt()).all(), (s.sum(0), s.square().sum(0).sqrt())


def test_resume_with_adaptive_sigma_is_exact() -> None:
    """3 generations with adaptive σ, a state-dict round trip into a fresh FlipES and 3 more give the parameters and
    log σ (moved from log 0.2) of 6 uninterrupted generations bit for bit; a fixed-σ state dict is refused by an
    adaptive-σ FlipES, naming sigma_lr's saved and current value."""

    def run(gens: int, es: flipes.FlipES, model: nn.Module) -> None:
        for _ in range(gens):
            with es.population() as pop:
                x = torch.ones(pop.size, 6, dtype=DT)
                fitness = -model(x).square().sum(1)
            es.tell(fitness)

    def make() -> tuple[flipes.FlipES, nn.Module]:
        model = small_model()
        return flipes.FlipES(model, popsize=16, sigma=0.2, groups=4, sigma_lr=0.4, seed=7), model

    es, model = make()
    run(6, es, model)
    whole = [p.detach().clone() for p in model.parameters()], es.log_sigma.clone()

    es, model = make()
    run(3, es, model)
    buffer = io.BytesIO()
    torch.save(es.state_dict(), buffer)
    es, model = make()
    buffer.seek(0)
    es.load_state_dict(torch.load(buffer, weights_only=True))
    run(3, es, model)
    assert all(torch.equal(a, b) for a, b in zip(whole[0], model.parameters(), strict=True))
    assert torch.equal(whole[1], es.log_sigma) and not torch.equal(whole[1], torch.full_like(whole[1], math.log(0.2)))

    fixed = flipes.FlipES(small_model(), popsize=16, sigma=0.2, groups=4)
    with pytest.raises(ValueError, match=r"sigma_lr: saved 0\.0, now 0\.4"):
        make()[0].load_state_dict(fixed.state_dict())


def test_adaptive_sigma_with_one_group_warns_where_flipout_weights_cannot_inform_it() -> None:
    """sigma_lr > 0 with one ε group warns (naming groups >= 8) when a Flipout layer's weights are evolved, whose
    σ-score is then the same for every member; not with 8 groups, nor for a model of dense parameters only."""
    with pytest.warns(UserWarning, match="groups >= 8"):
        flipes.FlipES(small_model(), popsize=16, sigma_lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flipes.FlipES(small_model(), popsize=16, sigma_lr=0.1, groups=8)
        flipes.FlipES(flipes.flipout(flipes.nn.Vector(torch.zeros(5))), popsize=16, sigma_lr=0.1)


def test_training_with_adaptive_sigma_and_no_groups_takes_eight_and_every_sigma_learns(tmp_path) -> None:
    """flipes.train with sigma_lr > 0 and the default groups=0 takes 8 ε groups (said in one note, recorded in
    config.json) rather than the one group it takes with a fixed σ, which would keep every Flipout weight's σ exactly
    where it started; after two generations every σ (weights, biases) has moved, without the one-group warning;
    where --popsize has no 8 groups it takes the most it has."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = flipes.train(**{**FAST_KW, "popsize": 32}, sigma_lr=0.2, generations=2, out=str(tmp_path / "run"))
    assert result.config.groups == 8 and result.es.groups == 8
    assert '"groups": 8' in (tmp_path / "run" / "config.json").read_text()
    assert all(s != 0.05 for s in result.es.sigmas()), result.es.sigmas()  # FAST_KW's CartPole row: σ 0.05
    fixed, note = resolve_groups(flipes.TrainConfig(popsize=32), 1)
    assert (fixed.groups, note) == (1, "")
    few, note = resolve_groups(flipes.TrainConfig(popsize=8, sigma_lr=0.2), 1)  # mirrored: 4 groups of 2 at most
    assert few.groups == 4 and note.startswith("--groups 4: --sigma-lr 0.2 learns a Flipout weight's σ from the variation")


def test_sigma_lr_options_are_checked() -> None:
    """A negative sigma_lr (a bool: TypeError), sigma_lr with a σ schedule, with low-rank noise and with ARS shaping
    (also as a functools.partial) each raise a ValueError naming the problem and the fix; numpy's float32 is a number
    like a float."""
    model = small_model()
    with pytest.raises(ValueError, match="sigma_lr must be a finite number >= 0"):
        flipes.FlipES(model, popsize=8, sigma_lr=-0.1)
    with pytest.raises(TypeError, match="sigma_lr must be a number, got True"):
        flipes.FlipES(model, popsize=8, sigma_lr=True)
    assert flipes.FlipES(model, popsize=16, groups=8, sigma_lr=np.float32(0.25)).sigma_lr == 0.25  # numpy's floats too
    with pytest.raises(ValueError, match="not a schedule"):
        flipes.FlipES(model, popsize=8, sigma=lambda g: 0.1, sigma_lr=0.1)
    with pytest.raises(ValueError, match="needs full-rank noise"):
        flipes.FlipES(model, popsize=8, sigma_lr=0.1, noise_rank=2)
    for ars in (flipes.shaping.ars, functools.partial(flipes.shaping.ars, top=2)):
        with pytest.raises(ValueError, match=r"shaping=flipes.shaping.ars: .* σ would never move .* use sigma_lr=0 with ars"):
            flipes.FlipES(model, popsize=16, groups=4, sigma_lr=0.1, shaping=ars)


@MADE_UP_FITNESS
def test_the_reported_sigma_is_the_mean_over_evolved_entries() -> None:
    """With σ set apart per slot, ``pop.sigma`` and the ``sigma`` that ``tell`` returns are the σ of the generation
    averaged over the evolved entries: (24 σ_0 + 4 σ_1 + 4 σ_2) / 32 for a 6 → 4 Flipout weight (its bias frozen, not
    counted) and a LayerNorm's scale and shift (4 entries each), to float64 rounding."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(6, 4, dtype=DT), nn.LayerNorm(4, dtype=DT)), frozen=["0.bias"])
    es = flipes.FlipES(model, popsize=8, sigma=0.2, groups=4, sigma_lr=0.3)
    es.log_sigma += torch.tensor([0.1, -0.7, 0.9], dtype=DT)
    s0, s1, s2 = es.sigmas()
    expect = (24 * s0 + 4 * s1 + 4 * s2) / 32
    with es.population() as pop:
        assert math.isclose(pop.sigma, expect, rel_tol=1e-12), (pop.sigma, expect)
    stats = es.tell(torch.randn(8, dtype=DT))
    assert math.isclose(stats["sigma"], expect, rel_tol=1e-12), (stats["sigma"], expect)
    assert es.sigmas() != [s0, s1, s2]  # σ moved after the step reported the generation's


@MADE_UP_FITNESS
def test_a_layer_with_a_frozen_weight_adapts_the_sigma_of_its_bias_alone() -> None:
    """A Flipout layer whose weight is frozen and whose bias (3 entries) evolves: its log σ moves by
    η Σ_n c_n (‖z_n‖² - 3) / (√6 N), c the centered ranks less the mean over the other mirrored pairs (the frozen
    weight adds no entries, neither to the score nor to d), and the reported σ weighs the slot by those 3 entries:
    (28 σ_0 + 3 σ_1) / 31 beside a 6 → 4 layer that evolves all of its 28; to float64 rounding."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(6, 4, dtype=DT), nn.Tanh(), nn.Linear(4, 3, dtype=DT)), frozen=["2.weight"])
    n, eta = 16, 0.3
    es = flipes.FlipES(model, popsize=n, sigma=0.2, groups=4, sigma_lr=eta, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    es.log_sigma += torch.tensor([0.1, -0.2], dtype=DT)
    s0, s1 = es.sigmas()
    with es.population():
        deltas = member_perturbations(es, model)
    fitness = torch.randn(n, dtype=DT)
    before = es.log_sigma.clone()
    stats = es.tell(fitness)
    c = baseline_free(centered_ranks_distinct(fitness), torch.arange(n) // 2)
    z2 = deltas["2.bias"].square().sum(1) / s1**2
    expect = eta * (c * (z2 - 3)).sum() / (math.sqrt(2 * 3) * n)
    torch.testing.assert_close(es.log_sigma[1] - before[1], expect, atol=1e-12, rtol=1e-9)
    assert math.isclose(stats["sigma"], (28 * s0 + 3 * s1) / 31, rel_tol=1e-12)


@MADE_UP_FITNESS
def test_pgpe_with_clipup_and_weight_decay_follows_a_per_member_reference_over_generations() -> None:
    """``--algo pgpe`` from Python plus weight decay: adaptive σ per slot (mirrored, 4 groups, centered ranks), ClipUp
    (momentum 0.9, a speed limit it reaches) and ``weight_decay``. Over 4 generations of a real fitness, a reference
    built from the materialized perturbations alone (its own σ, parameters and velocity, carried from generation to
    generation) gives each generation's σ, the step ClipUp takes along -Σ F̂ σ_i u_n/(Nσ_i²) + λθ over ALL parameters
    as one vector (the slots' different σ weigh their parts), and the parameters, to float64 rounding."""
    model = small_model()
    n, eta, wd, lr, momentum, max_speed = 16, 0.4, 0.05, 0.02, 0.9, 0.03
    es = flipes.FlipES(
        model, popsize=n, sigma=0.2, groups=4, sigma_lr=eta, weight_decay=wd,
        optimizer=lambda p: flipes.optim.ClipUp(p, lr=lr, momentum=momentum, max_speed=max_speed),
    )  # fmt: skip
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    target = {name: torch.randn(p.shape, dtype=DT, generator=torch.Generator().manual_seed(7)) for name, p in theta.items()}
    log_sigma = [math.log(0.2)] * 3
    velocity = {name: torch.zeros_like(p) for name, p in theta.items()}
    group, pair = torch.arange(n) // (n // 4), torch.arange(n) // 2
    flipout_weight = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, flipes.nn.FlipoutLinear)}
    clipped = 0
    for _ in range(4):
        with es.population():
            deltas = member_perturbations(es, model)
        fitness = -sum(((theta[k] + deltas[k] - target[k]) ** 2).flatten(1).sum(1) for k in theta)
        f_hat = centered_ranks_distinct(fitness)
        grad = {}
        for i, names in enumerate(slot_names(es, model)):
            sigma = math.exp(log_sigma[i])
            d = sum(theta[k].numel() for k in names)
            score = 0.0
            for k in names:
                z2 = deltas[k].flatten(1).square().sum(1) / sigma**2
                c = baseline_free(f_hat, group if k in flipout_weight else pair)
                score += (c * (z2 - theta[k].numel())).sum().item()
                u = deltas[k] / sigma
                grad[k] = -(f_hat.view(-1, *(1,) * theta[k].dim()) * u).sum(0) / (n * sigma) + wd * theta[k]
            log_sigma[i] += eta * score / (math.sqrt(2 * d) * n)
        norm = math.sqrt(sum(g.square().sum().item() for g in grad.values()))
        velocity = {k: momentum * velocity[k] + lr * grad[k] / norm for k in theta}
        speed = math.sqrt(sum(v.square().sum().item() for v in velocity.values()))
        clipped += speed > max_speed
        velocity = {k: v * min(1.0, max_speed / speed) for k, v in velocity.items()}
        theta = {k: theta[k] - velocity[k] for k in theta}
        es.tell(fitness)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), theta[name], atol=1e-12, rtol=0, msg=name)
        torch.testing.assert_close(es.log_sigma, torch.tensor(log_sigma, dtype=DT), atol=1e-12, rtol=0)
    assert clipped and len(set(log_sigma)) == 3  # the speed limit was reached; the slots' σ went apart


@pytest.mark.parametrize("hold_noise", [True, False])
def test_a_schedule_is_read_once_per_generation_when_its_population_is_entered(hold_noise: bool) -> None:
    """A σ schedule of one's own (a rule read as ``sigma=lambda g: rule["sigma"]``) changed inside the population block
    takes effect in the next generation: the members were perturbed at the value read on entering, and ``tell``,
    ``member_noise``, ``es.sigma`` and the stats keep it (the parameters equal, bit for bit, those of a run whose rule
    did not change; with ``hold_noise=False`` also for parts entered after the change). Between ``tell`` and the next
    population ``es.sigma`` reads the rule as it is, and a change there is the next generation's σ."""
    rule = {"sigma": 0.1}

    def generation(change: bool) -> tuple[dict[str, float], list[torch.Tensor], torch.Tensor, float]:
        torch.manual_seed(0)
        x = flipes.flipout(flipes.nn.Vector(torch.zeros(6)))
        es = flipes.FlipES(x, popsize=8, groups=4, sigma=lambda g: rule["sigma"], hold_noise=hold_noise,
                           optimizer=lambda p: torch.optim.SGD(p, lr=1.0))  # fmt: skip
        rule["sigma"] = 0.1
        with es.population() as pop:
            fitness = [-(x() - 1).square().sum(1) for _ in pop.split(4)][:1]
            if change:
                rule["sigma"] = 0.5
            fitness += [-(x() - 1).square().sum(1) for _ in pop.split(4)][1:]
            noise = [next(iter(es.member_noise(i).values())) for i in (0, 5)]
            inside = es.sigma
        stats = es.tell(torch.cat(fitness))
        return stats, noise, x.value.detach().clone(), inside

    (kept, kept_noise, kept_x, _), (changed, changed_noise, changed_x, inside) = generation(False), generation(True)
    assert kept["sigma"] == changed["sigma"] == inside == 0.1 and torch.equal(kept_x, changed_x)
    assert all(torch.equal(a, b) for a, b in zip(kept_noise, changed_noise, strict=True))
    torch.manual_seed(0)
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(6)))
    es = flipes.FlipES(x, popsize=8, groups=4, sigma=lambda g: rule["sigma"], hold_noise=hold_noise)
    rule["sigma"] = 0.1
    es.step(lambda model, pop: -(model() - 1).square().sum(1))
    assert es.sigma == 0.1
    rule["sigma"] = 0.3  # after tell, before the next population: the next generation's σ
    assert es.sigma == 0.3 and es.step(lambda model, pop: -(model() - 1).square().sum(1))["sigma"] == 0.3


def test_a_load_drops_the_held_schedule_value_as_it_drops_the_generations_noise() -> None:
    """A population block left without tell holds the schedule's σ; load_state_dict (of the same generation) drops it
    with the noise, so es.sigma then reads the rule as it is, the σ the next population perturbs at."""
    rule = {"sigma": 0.1}
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(6)))
    es = flipes.FlipES(x, popsize=8, groups=4, sigma=lambda g: rule["sigma"])
    state = es.state_dict()
    with es.population():
        x()
    rule["sigma"] = 0.3
    assert es.sigma == 0.1  # held: the block's members were perturbed at it
    es.load_state_dict(state)
    assert es.sigma == 0.3
    with es.population():
        x()
    assert es.sigma == 0.3
