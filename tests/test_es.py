"""The ES gradient, learning, determinism and bad input."""

from __future__ import annotations

import copy
import functools
import gc
import io
import math
import pickle
import warnings
import weakref
from collections.abc import Callable

import pytest
import torch
from helpers import MADE_UP_FITNESS, TiedLinears, run_thread_ranks
from reference import centered_ranks_distinct, member_deltas, member_perturbations
from torch import nn

import flipes
from flipes.es.shaping import centered_ranks, raw, z_score
from flipes.nn import FlipoutConv2d, FlipoutLinear, FlipoutLSTMCell

DT = torch.float64


class Mixed(nn.Module):
    """One slot of every kind: a grouped conv, a linear and the two weights of an LSTM cell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = FlipoutConv2d(4, 6, 3, groups=2, dtype=DT)
        self.fc = FlipoutLinear(6, 5, dtype=DT)
        self.cell = FlipoutLSTMCell(5, 3, dtype=DT)


@MADE_UP_FITNESS
@pytest.mark.parametrize("rank", [None, 1, 3])
@pytest.mark.parametrize("mirrored,groups", [(False, 1), (True, 1), (True, 4), (False, 16)])
def test_tell_gradient_equals_materialized_estimator(mirrored: bool, groups: int, rank: int | None, device: torch.device) -> None:
    """For a grouped conv, a linear layer and an LSTM cell's two weights, with or without mirroring, 1 to 16 groups,
    full or rank-1/3 noise: the ``.grad`` tell writes for every weight and bias equals -Σ_n F̂_n u_n / (Nσ), with F̂
    the centered ranks and u_n = δ_n/σ materialized from the population's noise, to 1e-12 absolute + 1e-10 relative
    (float64 rounding)."""
    torch.manual_seed(0)
    model, n, sigma = Mixed().to(device), 16, 0.07
    es = flipes.FlipES(
        model,
        popsize=n,
        sigma=sigma,
        seed=5,
        groups=groups,
        mirrored=mirrored,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        noise_rank=rank,
    )
    with es.population():
        noises = {name: layer.noise for name, layer in (("conv", model.conv), ("fc", model.fc), ("cell", model.cell))}
    fitness = torch.randn(n, dtype=DT, device=device)
    es.tell(fitness)
    f_hat = centered_ranks_distinct(fitness)

    def expect(delta: torch.Tensor) -> torch.Tensor:  # -ĝ = -Σ F̂_n u_n / (Nσ), u_n materialized
        u = delta / sigma
        return -(f_hat.view(-1, *(1,) * (u.dim() - 1)) * u).sum(0) / (n * sigma)

    pairs = [
        (model.conv.weight, member_deltas(noises["conv"][0], tuple(model.conv.weight.shape), 2)),
        (model.conv.bias, noises["conv"][0].bias),
        (model.fc.weight, member_deltas(noises["fc"][0], tuple(model.fc.weight.shape))),
        (model.fc.bias, noises["fc"][0].bias),
        (model.cell.weight_ih, member_deltas(noises["cell"][0], tuple(model.cell.weight_ih.shape))),
        (model.cell.bias_ih, noises["cell"][0].bias),
        (model.cell.weight_hh, member_deltas(noises["cell"][1], tuple(model.cell.weight_hh.shape))),
        (model.cell.bias_hh, noises["cell"][1].bias),
    ]
    for p, delta in pairs:
        torch.testing.assert_close(p.grad, expect(delta), atol=1e-12, rtol=1e-10)


@MADE_UP_FITNESS
def test_weight_decay_adds_l2_gradient() -> None:
    """From the same model, noise and fitness, ``weight_decay=0.1`` makes every evolved parameter's ``.grad`` (a Flipout
    weight and bias, a LayerNorm's dense-noise scale) exactly the ES gradient without it plus 0.1·θ; a frozen parameter
    (the LayerNorm's shift) gets no gradient and keeps its value."""
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)).to(DT)
    with torch.no_grad():
        initial[1].bias.fill_(0.3)
    runs = []
    for wd in (0.0, 0.1):
        model = flipes.flipout(copy.deepcopy(initial), frozen=["1.bias"])
        es = flipes.FlipES(model, popsize=4, sigma=0.1, weight_decay=wd, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
        es.step(lambda m, pop: torch.arange(pop.size, dtype=DT))
        runs.append(dict(model.named_parameters()))
    plain, decayed = runs
    for name in ("0.weight", "0.bias", "1.weight"):
        assert plain[name].grad.abs().min() > 0, name  # a gradient to add to
        assert torch.equal(decayed[name].grad, plain[name].grad + 0.1 * initial.get_parameter(name)), name
    assert decayed["1.bias"].grad is None and torch.equal(decayed["1.bias"], initial[1].bias)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_a_channels_last_conv_steps_as_the_contiguous_one(weight_decay: float) -> None:
    """``model.to(memory_format=torch.channels_last)``: the same outputs and, generation after generation, the same
    parameters as the contiguous model (float64, bit for bit) under the default fused Adam, which pairs a parameter's
    and its grad's memory element by element (a contiguous ``.grad`` on a channels_last weight would move each entry
    by another entry's step, off by up to 2·lr after one generation, silently)."""
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(1), nn.Linear(16, 2)).to(DT)
    x = torch.randn(8, 3, 6, 6, dtype=DT)
    runs = []
    for channels_last in (False, True):
        model = flipes.flipout(copy.deepcopy(initial))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            assert not model[0].weight.is_contiguous()
        es = flipes.FlipES(model, popsize=8, sigma=0.1, lr=0.01, seed=0, weight_decay=weight_decay)
        inputs = x.to(memory_format=torch.channels_last) if channels_last else x
        params = []
        for _ in range(3):
            es.step(lambda m, pop, inputs=inputs: m(inputs).sum(1))
            assert all(p.grad.stride() == p.stride() for p in model.parameters())
            params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        runs.append(params)
    for contiguous, channels_last in zip(*runs, strict=True):
        assert torch.equal(channels_last, contiguous)


def test_a_copied_or_unpickled_flipes_continues_as_the_original_on_its_own_model() -> None:
    """``copy.deepcopy(es)`` and ``pickle.loads(pickle.dumps(es))`` (a snapshot of a run in memory), also taken inside a
    population: two more generations end on exactly the original's parameters, and the copies step their own model.
    Their layers' slots were keyed by ``id(layer)`` of the original's layers: ``KeyError`` at the next population."""
    import pickle

    torch.manual_seed(0)

    model = flipes.flipout(nn.Sequential(TiedLinears(), nn.LayerNorm(16)).to(DT))  # a shared weight, biases of their own
    es = flipes.FlipES(model, popsize=8, sigma=0.1, lr=0.01, seed=0, groups=2)
    x = torch.randn(8, 16, dtype=DT)

    def fitness(m: nn.Module, pop: flipes.Population) -> torch.Tensor:
        return m(x).sum(1)

    es.step(fitness)
    copies = [copy.deepcopy(es), pickle.loads(pickle.dumps(es))]
    with es.population():
        copies.append(copy.deepcopy(es))
        es.model(x)
    start = [p.detach().clone() for p in es.params]
    for other in copies:
        assert other.model is not es.model
        for _ in range(2):
            other.step(fitness)
        assert all(torch.equal(p, q) for p, q in zip(es.params, start, strict=True))  # the original's model untouched
    for _ in range(2):
        es.step(fitness)
    for other in copies:
        assert other.generation == es.generation == 3
        assert all(torch.equal(p, q) for p, q in zip(other.params, es.params, strict=True))
        assert any(not torch.equal(p, q) for p, q in zip(other.params, start, strict=True))


@pytest.mark.parametrize("groups", [1, 4])
def test_a_flipes_pickled_after_a_forward_in_a_population_evaluates_the_same_members(groups: int) -> None:
    """``pickle.loads(pickle.dumps(es))`` taken inside a population after the model ran (its layers' buffers for the
    generation made): the copy's model computes every member's outputs bit for bit as the original's, on every call,
    and its tell ends on the same parameters. Pickle copies each view of a tensor on its own: buffers the layers keep
    with views into them must come back shared, or the copy's members run on stale buffers, silently."""
    import pickle

    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT))
    es = flipes.FlipES(model, popsize=8, sigma=0.3, seed=0, groups=groups)
    x = torch.randn(8, 3, dtype=DT)
    with es.population():
        members = model(x)
        other = pickle.loads(pickle.dumps(es))
    with other.population():
        assert torch.equal(other.model(x), members) and torch.equal(other.model(x), members)
    es.tell(members.sum(1))
    other.tell(members.sum(1))
    assert all(torch.equal(p, q) for p, q in zip(other.params, es.params, strict=True))


def test_shaping_functions() -> None:
    """``centered_ranks`` maps fitness to rank/(N - 1) - 1/2 with ties sharing their mean rank (all equal: zeros);
    ``z_score`` is (f - mean) / population std, checked against the hand-computed values (constant input: exactly
    zeros); ``raw`` is the identity. Integer scores shape as the same values in floating point: centered ranks
    truncated the tie's mean rank 2.5 to 2, z_score and ars raised torch's error on std."""
    f = torch.tensor([3.0, -1.0, 3.0, 10.0, 0.0])
    # ties share their mean rank: sorted -1, 0, 3, 3, 10 -> ranks 0, 1, 2.5, 2.5, 4
    torch.testing.assert_close(centered_ranks(f), torch.tensor([2.5, 0, 2.5, 4, 1]) / 4 - 0.5)
    torch.testing.assert_close(centered_ranks(torch.tensor([5.0, 5.0])), torch.zeros(2))
    # mean 3, deviations (0, -4, 0, 7, -3), population variance (16 + 49 + 9) / 5 = 14.8
    torch.testing.assert_close(z_score(f), torch.tensor([0.0, -4.0, 0.0, 7.0, -3.0]) / 14.8**0.5)
    assert torch.equal(z_score(torch.ones(3)), torch.zeros(3))
    assert torch.equal(raw(f), f)
    for shaping in (centered_ranks, z_score):  # integer scores (counts): ties still share a mean rank of 2.5
        assert torch.equal(shaping(f.long()), shaping(f))
    pairs = torch.tensor([1, 5, 2, 0, 3, 2])
    assert torch.equal(flipes.shaping.ars(pairs, top=2), flipes.shaping.ars(pairs.float(), top=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["distinct", "ties", "signed zeros and infinities"])
def test_centered_ranks_are_each_values_mean_rank_written_out(kind: str, dtype: torch.dtype) -> None:
    """``centered_ranks`` gives, bit for bit, ``rank / (N - 1) - 1/2`` with a value's rank the count of smaller values
    plus half the count of other equal ones (computed here by counting, in exact Python numbers), for 257 values; ±0
    are equal, infinities rank at the ends."""
    g = torch.Generator().manual_seed(1)
    f = {"distinct": torch.randn(257, generator=g, dtype=torch.float64),
         "ties": torch.randint(0, 5, (257,), generator=g).double() / 3,
         "signed zeros and infinities": torch.tensor([0.0, -0.0, math.inf, 1.0, -math.inf, -0.0, 1.0] * 3),
         }[kind].to(dtype)  # fmt: skip
    values = f.tolist()
    ranks = [sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]
    expect = torch.tensor(ranks, dtype=dtype) / (len(values) - 1) - 0.5
    got = centered_ranks(f)
    assert got.dtype == dtype
    assert torch.equal(got, expect)


@pytest.mark.parametrize(
    ("shaping", "bad"),
    [(centered_ranks, math.nan), (z_score, math.nan), (z_score, math.inf), (flipes.shaping.ars, math.nan),
     (flipes.shaping.ars, -math.inf)],
)  # fmt: skip
def test_shaping_functions_refuse_fitness_they_cannot_shape(shaping, bad: float) -> None:
    """Called on fitness with a NaN (and z_score and ars with an infinity) a shaping function raises naming the members,
    where centered_ranks gave the NaN the best rank and z_score and ars gave every member 0, without a word."""
    f = torch.tensor([2.0, bad, -1.0, 0.5, 3.0, bad], dtype=DT)
    with pytest.raises(ValueError, match=rf"^{shaping.__name__}: fitness of 2 member\(s\) is (NaN|not finite) \(1=.*, 5="):
        shaping(f)


@pytest.mark.parametrize("default", [torch.float16, torch.bfloat16])
def test_centered_ranks_of_float32_ties_under_a_half_default_dtype_are_exact(default: torch.dtype) -> None:
    """Under ``torch.set_default_dtype(float16 or bfloat16)``, 5,000 float32 values of 3,000 levels (ties whose mean
    ranks are half-integers past 2¹⁰) get, bit for bit, ``rank / (N - 1) - 1/2`` with the exact mean rank (counted in
    Python numbers), with and without autograd: the half default dtype does not round them."""
    f = torch.randint(0, 3000, (5000,), generator=torch.Generator().manual_seed(0)).float()
    counts = torch.bincount(f.long(), minlength=3000).tolist()
    below = [0]
    for c in counts[:-1]:
        below.append(below[-1] + c)
    ranks = [below[int(v)] + (counts[int(v)] - 1) / 2 for v in f.tolist()]
    expect = torch.tensor(ranks, dtype=torch.float32) / 4999 - 0.5
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        plain, tracked = centered_ranks(f), centered_ranks(f.clone().requires_grad_())
    finally:
        torch.set_default_dtype(old)
    assert plain.dtype == tracked.dtype == torch.float32
    assert torch.equal(plain, expect) and torch.equal(tracked, expect)


def test_z_score_of_values_whose_std_underflows_is_finite() -> None:
    """Distinct float64 fitness values of order 1e-200, whose population std underflows to 0 (their squared deviations
    are below the smallest double): z_score gives their z-scores, those of (1, 2, 1), finite, not the ±inf of dividing
    by that 0, which FlipES would refuse as non-finite weights."""
    f = torch.tensor([1e-200, 2e-200, 1e-200], dtype=DT)
    assert f.std(unbiased=False) == 0 and f.amax() > f.amin()
    expect = torch.tensor([-1.0, 2.0, -1.0], dtype=DT) / 2**0.5  # (f - 4/3) / √(2/9) of (1, 2, 1)
    torch.testing.assert_close(z_score(f), expect, rtol=1e-15, atol=1e-15)


@MADE_UP_FITNESS
@pytest.mark.filterwarnings("ignore::flipes.EqualFitnessWarning")  # equal on purpose
@pytest.mark.parametrize("shaping", [centered_ranks, z_score, flipes.shaping.ars])
@pytest.mark.parametrize("n", [3, 6])
def test_equal_fitness_leaves_parameters_and_sigma_where_they_are(shaping, n: int) -> None:
    """Every member at fitness 0.1 (float64), whose mean rounds an ulp away from it: each shaping maps the equal
    values to exact zeros, so neither the parameters (SGD at lr 1, mirrored=False where the shaping allows it: no pair
    cancels a common weight) nor an adaptive σ move, as EqualFitnessWarning says. z_score divided the rounding of the
    mean by a std of the same size and gave every member ±1: a step of norm ~1 in random directions."""
    mirrored = shaping is flipes.shaping.ars
    f = torch.full((n if not mirrored else 2 * n,), 0.1, dtype=DT)
    assert f.mean() != 0.1  # the rounded mean is an ulp off the values
    assert torch.equal(shaping(f), torch.zeros_like(f))
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).double())
    before = [p.detach().clone() for p in model.parameters()]
    options = {"groups": len(f) // 2, "mirrored": True} if mirrored else {"groups": len(f), "mirrored": False, "sigma_lr": 0.5}
    sgd = functools.partial(torch.optim.SGD, lr=1.0)
    es = flipes.FlipES(model, popsize=len(f), sigma=0.1, shaping=shaping, optimizer=sgd, **options)
    log_sigma = None if es.log_sigma is None else es.log_sigma.clone()
    with es.population():
        pass
    assert es.tell(f)["grad_norm"] == 0.0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert log_sigma is None or torch.equal(es.log_sigma, log_sigma)


def test_one_member_with_a_centering_shaping_is_refused_naming_raw() -> None:
    """A single member's centered rank or z-score is always 0, so such a FlipES would never move: refused (also as a
    functools.partial), naming popsize >= 2 and raw shaping, which a single member may use."""
    model = flipes.flipout(nn.Linear(3, 2))
    expect = r"popsize=1 with shaping=flipes.shaping.(centered_ranks|z_score): .* use popsize >= 2, or shaping=flipes.shaping.raw"
    for shaping in (centered_ranks, z_score, functools.partial(z_score)):
        with pytest.raises(ValueError, match=expect):
            flipes.FlipES(model, popsize=1, mirrored=False, shaping=shaping)
    flipes.FlipES(model, popsize=1, mirrored=False, shaping=raw)


def test_flipes_shaping_imports_as_a_module_by_the_name_the_readme_uses() -> None:
    """``flipes.shaping`` is the module the import system gives for that name, and ``from flipes.shaping import ...``
    and ``--shaping flipes.shaping:z_score`` give the very functions of ``flipes.es.shaping``."""
    import importlib

    from flipes.cli import load_callable

    assert importlib.import_module("flipes.shaping") is flipes.shaping
    from flipes.shaping import ars as imported

    assert imported is flipes.es.shaping.ars
    assert load_callable("flipes.shaping:z_score", "--shaping") is flipes.shaping.z_score is flipes.es.shaping.z_score


def test_each_spelling_of_a_flipes_shaping_rule_names_that_rule_and_nothing_else_does() -> None:
    """``--shaping`` names flipes' own rules by their table name, as ``flipes.shaping:NAME`` and as
    ``flipes.es.shaping:NAME``: all three give the one function (so validate's refusals and a resume's comparison treat
    them alike). A user's module with a function of the same name, an empty name, and a name in flipes.shaping that
    is no function stay the string they were (a plug-in to import)."""
    from flipes.search import own_shaping

    for table, name in (("z-score", "z_score"), ("centered-ranks", "centered_ranks"), ("raw", "raw")):
        for spec in (table, f"flipes.shaping:{name}", f"flipes.es.shaping:{name}"):
            assert own_shaping(spec) is getattr(flipes.shaping, name), spec
    assert own_shaping("auto") is centered_ranks and own_shaping("flipes.shaping:ars") is flipes.shaping.ars
    for spec in ("user_mod:z_score", "flipes.shaping:", "flipes.shaping:annotations", "flipes.shaping"):
        assert own_shaping(spec) == spec


def test_a_shaping_function_may_return_an_array_and_a_wrong_return_is_named() -> None:
    """A shaping function returning numpy ranks (as ``scipy.stats.rankdata`` does) or a list steps exactly as the
    same weights returned as a tensor, and finite weights whose sum overflows are taken; None, booleans, a wrong shape or
    NaN weights are one error naming what it returned, before anything changes."""

    def ranks(f: torch.Tensor) -> torch.Tensor:
        return f.argsort().argsort().double() - 3.5

    def run(shaping: Callable[[torch.Tensor], object]) -> list[torch.Tensor]:
        model = mlp(0)
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=0, shaping=shaping)
        with es.population() as pop:
            fitness = model(torch.ones(pop.size, 6))[:, 0]
        es.tell(fitness)
        return [p.detach().clone() for p in es.params]

    reference = run(ranks)
    for shaping in (lambda f: ranks(f).numpy(), lambda f: ranks(f).tolist()):
        assert all(torch.equal(p, q) for p, q in zip(run(shaping), reference, strict=True))
    # finite weights whose float32 sum overflows are finite all the same: a weight shared by a mirrored pair cancels
    huge = torch.tensor([3e38, 3e38, -3e38, -3e38, 3e38, 3e38, -3e38, -3e38])
    assert huge.sum().isinf()
    zeros = run(torch.zeros_like)
    assert all(torch.equal(p, q) for p, q in zip(run(lambda f: huge.clone()), zeros, strict=True))
    for bad, error, message in (
        (lambda f: None, TypeError, "must return weights \\(N,\\) as a Tensor or array of numbers, got NoneType$"),
        (lambda f: f > 0, TypeError, "got Tensor of torch.bool$"),
        (lambda f: f[:, None], ValueError, "to finite weights of that shape, got shape \\(8, 1\\)$"),
        (lambda f: f * float("nan"), ValueError, "to finite weights of that shape, got shape \\(8,\\) with non-finite values$"),
    ):
        model = mlp(0)
        before = [p.detach().clone() for p in model.parameters()]
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=0, shaping=bad)
        with es.population() as pop:
            fitness = model(torch.ones(pop.size, 6))[:, 0]
        with pytest.raises(error, match=message):
            es.tell(fitness)
        assert es.generation == 0 and all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_non_finite_fitness_from_non_finite_parameters_names_them_and_the_step_size() -> None:
    """After an update that overflowed the parameters (SGD at lr 1e38), the members' NaN fitness is refused naming
    the model's non-finite parameters and lr, not the fitness function; NaN fitness of finite parameters keeps the
    advice to clip (and pickles as it is)."""
    import pickle

    from flipes.es.checks import NonFiniteFitness

    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, sigma=0.1, optimizer=lambda p: torch.optim.SGD(p, lr=1e38), shaping=flipes.shaping.raw)
    with es.population() as pop:
        fitness = 1e10 * model(100 * torch.ones(pop.size, 6))[:, 0]
    assert not math.isfinite(es.tell(fitness)["update_ratio"])
    with es.population() as pop:
        fitness = model(torch.ones(pop.size, 6))[:, 0]
    message = r"^fitness of 8 member\(s\) is not finite \(0=nan, .*\): 4 evolved parameter\(s\) of the model are not finite "
    with pytest.raises(ValueError, match=message + r"\(0.weight, 0.bias, 2.weight, 2.bias\), .*; lower lr or sigma"):
        es.tell(fitness)
    assert es.generation == 1
    es = flipes.FlipES(mlp(0), popsize=8, sigma=0.1)
    with es.population():
        pass
    with pytest.raises(NonFiniteFitness, match=r"^fitness of 1 member\(s\) is not finite \(3=inf\); .*clip") as error:
        es.tell(torch.zeros(8).index_fill(0, torch.tensor([3]), math.inf))
    assert str(pickle.loads(pickle.dumps(error.value))) == str(error.value)


def test_a_shaping_that_works_in_place_changes_neither_the_stats_nor_the_callers_fitness() -> None:
    """A shaping function that centers in place (``f -= f.mean()``, numpy's idiom) steps exactly as the same
    arithmetic out of place (``z_score``), and leaves the stats, ``es.best`` and the caller's float64 fitness
    (a tensor, or a numpy array, which torch would share) as told."""

    def in_place(f: torch.Tensor) -> torch.Tensor:
        std = f.std(unbiased=False)
        f -= f.mean()
        return f.div_(std)

    def run(shaping: Callable[[torch.Tensor], torch.Tensor], as_numpy: bool) -> tuple:
        model = mlp(0).double()
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=0, shaping=shaping, track_best=True)
        with es.population() as pop:
            fitness = model(torch.ones(pop.size, 6, dtype=DT))[:, 0]
        told = fitness.numpy() if as_numpy else fitness
        kept = fitness.clone()
        stats = es.tell(told)
        assert torch.equal(fitness, kept)  # the caller's values, as they were
        return stats, es.best.fitness, [p.detach().clone() for p in es.params]

    for as_numpy in (False, True):
        (stats, best, params), (ref_stats, ref_best, ref_params) = run(in_place, as_numpy), run(z_score, as_numpy)
        assert stats == ref_stats and best == ref_best and stats["fitness_max"] == best
        assert all(torch.equal(p, q) for p, q in zip(params, ref_params, strict=True))


def test_learns_a_linear_teacher() -> None:
    """ES (64 members, σ = 0.02, lr decayed by a torch scheduler) on a linear student of a linear teacher: after 300
    generations the mean squared error is below 1e-6 of its initial value, and weight and bias are within 1e-3 of the
    teacher's (the unique optimum). Measured at seed 0: 2e-8 and 1.1e-4; on seeds 0-3 at most 9e-8 and 3.6e-4."""
    torch.manual_seed(0)
    teacher = nn.Linear(8, 4)
    x = torch.randn(256, 8)
    y = teacher(x).detach()
    student = FlipoutLinear(8, 4)
    es = flipes.FlipES(student, popsize=64, sigma=0.02, lr=0.05, seed=0)
    decay = torch.optim.lr_scheduler.ExponentialLR(es.optimizer, gamma=0.985)  # any torch.optim tool works

    def fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        pred = model(x.expand(pop.size, *x.shape))
        return -(pred - y).square().mean((1, 2))

    start = (student(x) - y).square().mean().item()
    for _ in range(300):
        es.step(fitness)
        decay.step()
    loss = (student(x) - y).square().mean().item()
    assert loss < 1e-6 * start, (start, loss)  # the optimum is the teacher itself (loss 0)
    torch.testing.assert_close(student.weight, teacher.weight, atol=1e-3, rtol=0)
    torch.testing.assert_close(student.bias, teacher.bias, atol=1e-3, rtol=0)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return flipes.flipout(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)))


def fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    x = torch.linspace(-1, 1, 6 * 5).view(5, 6)
    return -model(x.expand(pop.size, 5, 6)).sin().sum((1, 2))


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_es_sigma_reads_the_generations_sigma_and_setting_it_is_refused_not_ignored() -> None:
    """``es.sigma`` is the σ of the generation being evaluated (a number, a schedule's value at that generation);
    assigning it, which nothing would read, raises an AttributeError naming FlipES(sigma=...) and a schedule, and the
    members' σ stays the constructor's."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, sigma=0.1, lr=0.01, seed=0)
    assert es.sigma == 0.1
    with pytest.raises(AttributeError, match=r"^es.sigma = 0.01: σ is not set on a FlipES, it is FlipES\(sigma=...\), .*"
                                             r"flipes.search.SigmaDecay"):  # fmt: skip
        es.sigma = 0.01
    with es.population() as pop:
        assert pop.sigma == es.sigma == 0.1
        f = fitness(model, pop)
    es.tell(f)
    model = mlp(0)
    decaying = flipes.FlipES(model, popsize=8, sigma=flipes.search.SigmaDecay(0.1, 0.5, 0.01), seed=0)
    for _ in range(3):
        decaying.step(fitness)
    with decaying.population() as pop:
        assert pop.sigma == decaying.sigma == max(0.1 * 0.5**3, 0.01)


def test_es_lr_sets_every_param_groups_lr_as_the_optimizers_own_groups_do() -> None:
    """``es.lr = x`` sets the lr of every parameter group: 3 generations with it set to 0.01 after the first end on
    the parameters of setting the groups' lr by hand, bit for bit; ``es.lr`` reads it back."""
    runs = []
    for by_property in (True, False):
        model = mlp(0)
        es = flipes.FlipES(model, popsize=8, sigma=0.1, lr=0.1, seed=0)
        assert es.lr == 0.1
        for generation in range(3):
            if generation == 1 and by_property:
                es.lr = 0.01
            elif generation == 1:
                for group in es.optimizer.param_groups:
                    group["lr"] = 0.01
            es.step(fitness)
        assert es.lr == 0.01 and es.state_dict()["optimizer"]["param_groups"][0]["lr"] == 0.01
        runs.append(params(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_same_seed_same_parameters_and_resume_continues_bit_for_bit() -> None:
    """Two FlipES with the same seed and initial model end 10 generations with bit-identical parameters; a differently
    initialized model that loads the generation-10 state dict continues for 5 generations bit for bit like the
    original; another seed ends with other parameters."""
    a, b = mlp(0), mlp(0)
    es_a = flipes.FlipES(a, popsize=32, sigma=0.05, seed=11, groups=2)
    es_b = flipes.FlipES(b, popsize=32, sigma=0.05, seed=11, groups=2)
    for _ in range(10):
        es_a.step(fitness)
        es_b.step(fitness)
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(b), strict=True))

    buf = io.BytesIO()
    torch.save(es_a.state_dict(), buf)
    for _ in range(5):
        es_a.step(fitness)
    c = mlp(99)  # different init: everything must come from the checkpoint
    es_c = flipes.FlipES(c, popsize=32, sigma=0.05, seed=11, groups=2)
    buf.seek(0)
    es_c.load_state_dict(torch.load(buf))
    assert es_c.generation == 10
    for _ in range(5):
        es_c.step(fitness)
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(c), strict=True))
    other = flipes.FlipES(mlp(0), popsize=32, sigma=0.05, seed=12, groups=2)
    for _ in range(10):
        other.step(fitness)
    assert not torch.equal(params(other.model)[0], params(b)[0])  # the seed matters


def test_loading_a_state_of_another_configuration_is_an_error() -> None:
    """Loading a state dict saved with another popsize raises a ValueError naming the option, the saved and the
    current value; a dict that is not a FlipES state dict raises saying so."""
    es = flipes.FlipES(mlp(0), popsize=8, seed=1)
    with pytest.raises(ValueError, match="popsize: saved 8, now 16"):
        flipes.FlipES(mlp(0), popsize=16, seed=1).load_state_dict(es.state_dict())
    with pytest.raises(ValueError, match="not a FlipES state dict"):
        es.load_state_dict({"model": {}})


def test_loading_a_state_saved_with_another_optimizer_is_an_error_that_changes_nothing() -> None:
    """A state saved with ClipUp, loaded into a FlipES with Adam (and back), is a ValueError naming both
    optimizers, raised before anything is loaded (torch would take the other optimizer's settings and fail
    with a KeyError, 'step' or later 'momentum', after the model's weights were replaced); the same
    optimizer loads, and a state saved before the optimizer was recorded still loads."""
    clipup = flipes.FlipES(mlp(0), popsize=8, seed=1, optimizer=lambda p: flipes.optim.ClipUp(p, lr=0.05, max_speed=0.1))
    clipup.step(fitness)
    adam = flipes.FlipES(mlp(1), popsize=8, seed=1)
    adam.step(fitness)
    before = [p.clone() for p in params(adam.model)]
    with pytest.raises(ValueError, match=r"optimizer flipes\.optim\.ClipUp, this FlipES has torch\.optim\.adam\.Adam"):
        adam.load_state_dict(clipup.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(params(adam.model), before, strict=True)) and adam.generation == 1
    with pytest.raises(ValueError, match=r"saved with the optimizer torch\.optim\.adam\.Adam, this FlipES has flipes"):
        clipup.load_state_dict(adam.state_dict())
    same = flipes.FlipES(mlp(2), popsize=8, seed=1)
    same.load_state_dict(adam.state_dict())
    older = {k: v for k, v in adam.state_dict().items() if k != "optimizer_class"}
    flipes.FlipES(mlp(2), popsize=8, seed=1).load_state_dict(older)
    assert same.generation == 1 and all(torch.equal(p, q) for p, q in zip(params(same.model), before, strict=True))


@MADE_UP_FITNESS
def test_a_second_tell_in_one_generation_says_that_tell_already_ended_it() -> None:
    """tell() twice after one population is a RuntimeError that names the generation the first tell ended."""
    es = flipes.FlipES(mlp(0), popsize=8, seed=1)
    with es.population():
        pass
    es.tell(torch.arange(8.0))
    with pytest.raises(RuntimeError, match=r"generation 1 \(tell\(\) already ended generation 0\).*then one tell"):
        es.tell(torch.arange(8.0))


def test_the_flatten_that_a_conv_nets_shape_error_names_serves_members_and_plain_batches() -> None:
    """A conv net whose ``nn.Flatten()`` flattens a member's examples into its features is refused naming
    ``nn.Flatten(start_dim=-3)``; with it, the same model takes plain ``(batch, C, H, W)`` outside a population and
    ``(members, batch, C, H, W)`` inside one, each member's logits equal to the unconverted net run with that member's
    explicit weights (float64, 1e-12)."""

    def net(flatten: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), flatten, nn.Linear(3 * 4 * 4, 2)).double()

    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    model = flipes.flipout(net(nn.Flatten()))
    es = flipes.FlipES(model, popsize=4, sigma=0.1)
    names = r"nn\.Flatten\(start_dim=-3\) after a Conv2d's .*, -2 after a Conv1d's, -4 after a Conv3d's"
    with es.population() as pop, pytest.raises(ValueError, match=names):
        model(x.expand(pop.size, *x.shape))
    plain = net(nn.Flatten(start_dim=-3))
    model = flipes.flipout(copy.deepcopy(plain))
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # outside a population: the plain net
    es = flipes.FlipES(model, popsize=4, sigma=0.1)
    with es.population() as pop:
        logits = model(x.expand(pop.size, *x.shape))
        assert logits.shape == (4, 5, 2)
        for i in pop.members:
            plain.load_state_dict(es.member_state_dict(i))
            torch.testing.assert_close(logits[i], plain(x), rtol=0, atol=1e-12)


def test_bad_input_is_rejected_and_leaves_parameters_unchanged() -> None:
    """tell before any population is a RuntimeError; inputs without the members first, or with the examples flattened
    into the features (naming ``start_dim=-3``), or of another feature count (naming in_features, not flattening), are
    ValueErrors; non-finite fitness (naming the members and values),
    too few values or a (N, 1) shape are ValueErrors that leave the parameters and generation unchanged, after which a
    good fitness is taken (finite values whose sum overflows too). An odd number of members per group with mirroring,
    σ that is not > 0 (also from a schedule, naming the generation), a popsize not divisible by groups and a model
    without Flipout layers are ValueErrors."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    with pytest.raises(RuntimeError, match="before any population"):
        es.tell(torch.zeros(8))
    with es.population() as pop, pytest.raises(ValueError, match="members first"):
        model(torch.zeros(pop.size - 1, 6))
    with es.population() as pop, pytest.raises(ValueError, match=r"has 18 features, the layer takes 6.*start_dim=-3"):
        model(torch.zeros(pop.size, 3, 6).flatten(1))  # examples flattened into the features
    with es.population() as pop, pytest.raises(ValueError, match=r"has 4 features, the layer takes 6; give it in_features=4"):
        model(torch.zeros(pop.size, 1, 4))  # another input size (an env's observations): no hint about flattening
    before = params(model)
    for bad, match in [
        (torch.tensor([0.0, 1, float("nan"), 3, 4, 5, float("inf"), 7]), r"2 member\(s\) is not finite \(2=nan, 6=inf\)"),
        (torch.zeros(7), r"shape \(7,\).*8 members"),
        (torch.zeros(8, 1), r"shape \(8, 1\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            es.tell(bad)
        assert all(torch.equal(p, q) for p, q in zip(params(model), before, strict=True))
    assert es.generation == 0
    es.tell(torch.arange(8.0))  # a good fitness is still accepted for the same generation
    assert es.generation == 1
    with es.population() as pop:
        model(torch.zeros(pop.size, 6))
    huge = torch.linspace(1e308, 1.5e308, 8, dtype=torch.float64)  # finite, though their sum overflows: accepted
    assert huge.sum().isinf()
    es.tell(huge)
    assert es.generation == 2

    with pytest.raises(ValueError, match=r"popsize/groups = 7 members \(odd\)"):
        flipes.FlipES(mlp(0), popsize=7)
    with pytest.raises(ValueError, match=r"popsize/groups = 3 members \(odd\)"):
        flipes.FlipES(mlp(0), popsize=12, groups=4)  # 3 members per group
    flipes.FlipES(mlp(0), popsize=7, mirrored=False)
    for sigma in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sigma must be"):
            flipes.FlipES(mlp(0), popsize=8, sigma=sigma)
    scheduled = flipes.FlipES(mlp(0), popsize=8, sigma=lambda g: 0.1 - g)  # a schedule that reaches 0
    scheduled.step(fitness)
    with pytest.raises(ValueError, match=r"sigma must be .* at generation 1"):
        scheduled.step(fitness)
    with pytest.raises(ValueError, match="multiple of groups"):
        flipes.FlipES(mlp(0), popsize=10, groups=4)
    with pytest.raises(ValueError, match="no Flipout layer"):
        flipes.FlipES(nn.Linear(2, 2), popsize=8)


def test_sigma_schedule_is_used_per_generation() -> None:
    """A σ schedule's value is used per generation: step reports exactly 0.1·0.5^g for g = 0, 1, 2, and the population
    of generation 3 has σ = 0.0125."""
    es = flipes.FlipES(mlp(0), popsize=8, sigma=lambda g: 0.1 * 0.5**g)
    sigmas = [es.step(fitness)["sigma"] for _ in range(3)]
    assert sigmas == [0.1, 0.05, 0.025]
    with es.population() as pop:
        assert pop.sigma == 0.0125 and pop.generation == 3 and pop.size == 8


def test_a_sigma_decay_outside_its_ranges_is_refused_where_it_is_made() -> None:
    """SigmaDecay(sigma, decay, min) takes what --sigma, --sigma-decay and --sigma-min take: sigma > 0, decay in (0, 1],
    min in [0, sigma], finite numbers (numpy's too). A decay above 1 (σ growing every generation), a floor above sigma
    (σ replaced by it from generation 0) or a NaN decay went to FlipES unchecked, the first two without a word."""
    for args in ((0.1, 2.0), (0.1, 0.9, 0.2), (0.1, 0.9, -0.01), (0.0, 0.9), (0.1, 0.0), (0.1, float("nan")), ("0.1", 0.9)):
        with pytest.raises(ValueError, match=r"^SigmaDecay"):
            flipes.search.SigmaDecay(*args)
    assert (
        flipes.search.SigmaDecay(torch.tensor(0.5).numpy()[()], 0.5, 0.1)(2) == 0.125
        and flipes.search.SigmaDecay(0.1, 1.0, 0.1)(9) == 0.1
    )


@MADE_UP_FITNESS
def test_a_sigma_schedule_samples_and_divides_by_each_generations_sigma() -> None:
    """Generation g of a schedule draws its noise at σ_g (the sample std of 1200 weight entries is within
    15% of σ_g: 7 standard deviations, false alarm ~1e-12; of the 240 bias entries, 120 independent draws as mirrored
    pairs are negatives, within 30%: 4.6 standard deviations, false alarm 5e-6 (χ²₁₂₀); fixed seed) and its gradient is
    -Σ F̂_n δ_n / (Nσ_g²), with each member's perturbation δ_n = σ_g u_n materialized from that noise."""
    torch.manual_seed(0)
    model, n = FlipoutLinear(40, 30, dtype=DT), 8
    es = flipes.FlipES(model, popsize=n, sigma=lambda g: 0.1 * 3.0**g, seed=2, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    for generation in range(3):
        sigma = 0.1 * 3.0**generation
        with es.population():
            noise = model.noise[0]
        assert abs(noise.eps.std().item() / sigma - 1) < 0.15
        assert noise.bias.numel() == 240 and abs(noise.bias.std().item() / sigma - 1) < 0.3
        fitness = torch.randn(n, dtype=DT)
        es.tell(fitness)
        f_hat = centered_ranks_distinct(fitness)
        for p, delta in ((model.weight, member_deltas(noise, tuple(model.weight.shape))), (model.bias, noise.bias)):
            expect = -(f_hat.view(-1, *(1,) * (delta.dim() - 1)) * delta).sum(0) / (n * sigma * sigma)
            torch.testing.assert_close(p.grad, expect, atol=1e-12, rtol=1e-10)


@MADE_UP_FITNESS
def test_bfloat16_and_mixed_precision_models_step_with_grads_in_each_parameters_dtype() -> None:
    """A bfloat16 model takes a step (its parameters change) with bfloat16 grads; in a model of a float32 and a
    float64 layer each weight's grad has its parameter's dtype and equals the materialized estimator -Σ F̂_n δ_n /
    (Nσ²) to 1e-5 (relative and absolute: float32 rounding)."""
    from flipes.checkpoint import tensors_sha256

    torch.manual_seed(0)
    half = nn.Sequential(FlipoutLinear(6, 8, dtype=torch.bfloat16), nn.Tanh(), FlipoutLinear(8, 2, dtype=torch.bfloat16))
    es = flipes.FlipES(half, popsize=8, sigma=0.1, seed=0)
    before = tensors_sha256(es.params)
    with es.population() as pop:
        f = -half(torch.randn(pop.size, 6, dtype=torch.bfloat16)).float().square().sum(1)
    es.tell(f)
    assert all(p.grad.dtype == torch.bfloat16 for p in es.params)
    assert tensors_sha256(es.params) != before

    # float32 and float64 layers in one model: tell writes each grad in its parameter's dtype, and
    # the values are the materialized estimator's
    model = nn.Sequential(FlipoutLinear(4, 3, dtype=torch.float32), FlipoutLinear(3, 2, dtype=DT))
    n, sigma = 8, 0.1
    es = flipes.FlipES(model, popsize=n, sigma=sigma, seed=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    with es.population():
        noises = [layer.noise[0] for layer in model]
    fitness = torch.randn(n, dtype=DT)
    es.tell(fitness)
    f_hat = centered_ranks_distinct(fitness)
    for layer, noise in zip(model, noises, strict=True):
        delta = member_deltas(noise, tuple(layer.weight.shape)).to(DT)
        expect = -(f_hat.view(-1, 1, 1) * delta).sum(0) / (n * sigma * sigma)
        assert layer.weight.grad.dtype == layer.weight.dtype
        torch.testing.assert_close(layer.weight.grad.to(DT), expect, atol=1e-5, rtol=1e-5)


@MADE_UP_FITNESS
def test_a_bfloat16_layers_gradient_is_the_exact_sum_rounded_once() -> None:
    """A bfloat16 layer's gradient sums N members' weighted perturbations in float32, shaped fitness
    included: each entry is the float64 estimator from the same (bfloat16) noise up to the final
    rounding to bfloat16 (half an ulp, at most 2^-8 relative) and float32's own rounding (2^-16 of
    the largest entry bounds it with room). Weights rounded to bfloat16 before the sum miss by up to
    2^-9 of each term, which cancellation turns into far more than 2^-8 of a small entry."""
    torch.manual_seed(0)
    layer, n, sigma = FlipoutLinear(64, 48, dtype=torch.bfloat16), 512, 0.1
    es = flipes.FlipES(layer, popsize=n, sigma=sigma, seed=4, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    with es.population():
        noise = layer.noise[0]
    fitness = torch.randn(n, dtype=DT)
    es.tell(fitness)
    delta = member_deltas(noise, tuple(layer.weight.shape)).to(DT)
    expect = -(centered_ranks_distinct(fitness).view(-1, 1, 1) * delta).sum(0) / (n * sigma * sigma)
    error = (layer.weight.grad.to(DT) - expect).abs()
    assert (error <= 2**-8 * expect.abs() + 2**-16 * expect.abs().max()).all(), (error / expect.abs()).max()


@pytest.mark.parametrize(
    ("lr", "warns"), [(0.0, False), (0, False), (torch.tensor(0.0), False), (torch.tensor(1e-9), True), (1e-9, True)]
)
def test_a_zero_lr_which_moves_nothing_on_purpose_is_no_rounded_step(lr: object, warns: bool) -> None:
    """SGD at lr 0 (a float, an int or a tensor) leaves every entry of a bfloat16 Linear unchanged on purpose: ``tell`` does not
    warn RoundedStepWarning; at lr 1e-9 (a float or a tensor), whose steps round away as well, it warns once."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Linear(8, 4).to(torch.bfloat16))
    es = flipes.FlipES(model, popsize=8, sigma=0.05, seed=0, optimizer=lambda params: torch.optim.SGD(params, lr=lr))
    x = torch.randn(8, 8, dtype=torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with es.population():
            fitness = model(x).float().sum(1)
        es.tell(fitness)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))  # nothing moved, either way
    rounded = [w for w in caught if issubclass(w.category, flipes.RoundedStepWarning)]
    assert len(rounded) == warns, [str(w.message) for w in caught]


def test_a_param_group_at_lr_zero_leaves_the_other_groups_rounded_steps_said() -> None:
    """A bfloat16 model whose first layer sits in a param group at lr 0 (held on purpose) and whose second steps at
    lr 1e-9 (rounded away): ``tell`` warns RoundedStepWarning for the second group, whose share alone is counted, and
    with both groups at lr 0 it does not."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)).to(torch.bfloat16))
    x = torch.randn(8, 8, dtype=torch.bfloat16)
    for second, warns in ((1e-9, True), (0.0, False)):

        def groups(params: list[nn.Parameter], second: float = second) -> torch.optim.Optimizer:
            return torch.optim.SGD([{"params": params[:2], "lr": 0.0}, {"params": params[2:], "lr": second}])

        es = flipes.FlipES(model, popsize=8, sigma=0.05, seed=0, optimizer=groups)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with es.population():
                fitness = model(x).float().sum(1)
            es.tell(fitness)
        rounded = [w for w in caught if issubclass(w.category, flipes.RoundedStepWarning)]
        assert len(rounded) == warns, [str(w.message) for w in caught]


class MirrorComm:
    """Process ``rank`` of 2 whose other process sends the very values this one does: collectives without threads."""

    size, local_rank, local_size, bytes_sent = 2, 0, 1, 0

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def allgather_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x])

    def allreduce_sum_(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2)

    def bcast(self, obj: object) -> object:
        return obj

    def allgather_object(self, obj: object) -> list:
        return [obj, obj]

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rounded_step_warns_above_five_percent_once_and_on_rank_0_alone(rank: int) -> None:
    """A bfloat16 Linear(10, 10) whose weight entries are 1.0 (an SGD step of lr 1e-6 is below half their spacing,
    2**-8) or 0 (any step moves them), every entry with a non-zero gradient: 5 of the 100 held (5%, ROUNDED_SHARE) is
    no RoundedStepWarning, 6 warns naming 6% at the first of two tells alone; rank 1 of 2 processes warns of neither."""
    x = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)).bfloat16()
    for held, warns in ((5, 0), (6, 1 if rank == 0 else 0)):
        model = flipes.flipout(nn.Linear(10, 10, bias=False).to(torch.bfloat16))
        with torch.no_grad():
            model.weight.zero_().view(-1)[:held] = 1.0
        sgd = lambda params: torch.optim.SGD(params, lr=1e-6)  # noqa: E731
        es = flipes.FlipES(model, popsize=8, groups=2, sigma=0.05, seed=0, comm=MirrorComm(rank), optimizer=sgd)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                with es.population() as pop:
                    fitness = model(x[: pop.size]).float().sum(1)
                es.tell(fitness)
                assert (model.weight.grad != 0).all() and (model.weight.view(-1)[held:] != 0).all()
                assert torch.equal(model.weight.view(-1)[:held], torch.ones(held, dtype=torch.bfloat16))
        rounded = [str(w.message) for w in caught if issubclass(w.category, flipes.RoundedStepWarning)]
        assert len(rounded) == warns, rounded
        assert all("left 6% of the bfloat16 parameters' entries" in m for m in rounded), rounded


@MADE_UP_FITNESS
def test_a_bfloat16_dense_parameters_gradient_is_the_exact_sum_rounded_once() -> None:
    """As for a Flipout layer, the dense per-member noise of a bfloat16 LayerNorm's scale and shift (512 members) is
    summed with its shaped fitness in float32 at least: each entry of the gradient is the float64 estimator from the
    same noise up to the final rounding to bfloat16 and float32's own (2^-8 relative plus 2^-16 of the largest
    entry). Coefficients rounded to bfloat16 (centered ranks of 512 members need 9 bits) miss by far more."""
    torch.manual_seed(0)
    norm, n, sigma = flipes.flipout(nn.LayerNorm(64, dtype=torch.bfloat16)), 512, 0.1
    es = flipes.FlipES(norm, popsize=n, sigma=sigma, seed=4, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    with es.population():
        deltas = member_perturbations(es, norm)
    fitness = torch.randn(n, dtype=DT)
    es.tell(fitness)
    for name, p in norm.named_parameters():
        expect = -(centered_ranks_distinct(fitness).view(-1, 1) * deltas[name].to(DT)).sum(0) / (n * sigma * sigma)
        error = (p.grad.to(DT) - expect).abs()
        assert (error <= 2**-8 * expect.abs() + 2**-16 * expect.abs().max()).all(), (name, (error / expect.abs()).max())


def test_nested_populations_and_a_second_flipes_on_one_model_are_errors() -> None:
    """A population inside a population of the same layers, or using a FlipES after a newer one was
    made for its model, raises instead of silently running some members on the mean network; a
    FlipES made again (the notebook cell run twice) takes the model over and works."""
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    es = flipes.FlipES(model, popsize=4)
    with es.population(), pytest.raises(RuntimeError, match="population\\(\\) inside a population: 2 layer"):
        with es.population():
            pass
    newer = flipes.FlipES(model, popsize=4)
    with pytest.raises(RuntimeError, match="model has a newer FlipES: one FlipES per model"):
        with es.population():
            pass
    with newer.population(), pytest.raises(RuntimeError, match="newer FlipES"):
        with es.population():
            pass
    with newer.population() as pop:
        out = model(torch.ones(pop.size, 3))
    newer.tell(out[:, 0])
    del newer
    es = flipes.FlipES(model, popsize=4)  # the last one made owns the model
    es.step(lambda m, pop: m(torch.ones(pop.size, 3))[:, 0])


@MADE_UP_FITNESS
def test_population_generator_depends_on_seed_generation_and_stream_alone() -> None:
    """``pop.generator()`` draws the same numbers for the same (seed, generation, stream), on another
    FlipES too (another process, a resume), and other numbers when any of the three changes."""

    def draws(seed: int, generations: int, stream: str = "fitness") -> torch.Tensor:
        es = flipes.FlipES(mlp(0), popsize=4, sigma=0.1, seed=seed)
        for _ in range(generations):
            with es.population():
                pass
            es.tell(torch.arange(4.0))
        with es.population() as pop:
            assert (pop.seed, pop.generation) == (seed, generations)
            return torch.randperm(1000, generator=pop.generator(stream))

    first = draws(0, 1)
    assert torch.equal(first, draws(0, 1))
    for other in (draws(1, 1), draws(0, 2), draws(0, 1, "minibatch")):
        assert not torch.equal(first, other)


def minibatches(seed: int, generations: int, examples: int, batch: int, stream: str = "minibatch") -> list[torch.Tensor]:
    """``pop.minibatch(examples, batch, stream)`` of generations ``0 … generations-1`` of a fresh FlipES of ``seed``."""
    es, out = flipes.FlipES(mlp(0), popsize=4, sigma=0.1, seed=seed), []
    for _ in range(generations):
        with es.population() as pop:
            out.append(pop.minibatch(examples, batch, stream))
        es.tell(torch.arange(4.0))
    return out


@MADE_UP_FITNESS
def test_population_minibatch_walks_an_epoch_wise_shuffle_of_seed_generation_and_stream_alone() -> None:
    """``pop.minibatch(10, 3)`` is a drop-last shuffling loader over generations: each epoch (3 generations) takes
    disjoint batches of 3 distinct indices (9 of the 10 examples), the next epoch another order; the batches are
    those of another FlipES of the same seed (a resume, another process) and of every part of a population, and
    another seed or stream shuffles otherwise."""
    batches = minibatches(0, 6, 10, 3)
    assert all(b.dtype == torch.int64 and b.shape == (3,) for b in batches)
    for epoch in (batches[:3], batches[3:]):
        assert torch.cat(epoch).unique().numel() == 9 and int(torch.cat(epoch).max()) < 10
    assert not torch.equal(torch.cat(batches[:3]), torch.cat(batches[3:]))
    assert all(torch.equal(a, b) for a, b in zip(batches, minibatches(0, 6, 10, 3), strict=True))
    for other in (minibatches(1, 1, 10, 3), minibatches(0, 1, 10, 3, "test")):
        assert not torch.equal(other[0], batches[0])
    es = flipes.FlipES(mlp(0), popsize=8, sigma=0.1, groups=2)
    with es.population() as pop:
        whole = pop.minibatch(100, 7)
        assert all(torch.equal(part.minibatch(100, 7), whole) for part in pop.split(3))
    assert torch.equal(minibatches(0, 1, 5, 5)[0].sort().values, torch.arange(5))  # one batch is the whole set


@MADE_UP_FITNESS
def test_population_minibatch_from_the_held_epoch_shuffle_is_the_one_drawn_afresh() -> None:
    """The batches of a FlipES's ``pop`` (its epoch's shuffle held from generation to generation and part to part) are
    exactly those of the same generation's ``Population`` drawing the shuffle afresh (one built by hand, or pickled to
    a worker, which holds none), for two data sets at once; editing a returned batch in place changes no later one."""
    es, streams = flipes.FlipES(mlp(0), popsize=8, sigma=0.1, seed=3, groups=2), [(10, 3, "minibatch"), (7, 2, "b")]
    for _ in range(7):
        with es.population() as pop:
            fresh = flipes.Population(pop.size, pop.popsize, pop.generation, pop.sigma, pop.members, pop.groups, seed=3)
            for examples, batch, stream in streams:
                held, expected = pop.minibatch(examples, batch, stream), fresh.minibatch(examples, batch, stream)
                assert torch.equal(held, expected), (pop.generation, stream)
                held.fill_(-1)
                assert torch.equal(pop.minibatch(examples, batch, stream), expected)
                assert torch.equal(pickle.loads(pickle.dumps(pop)).minibatch(examples, batch, stream), expected)
                assert all(torch.equal(part.minibatch(examples, batch, stream), expected) for part in pop.split(4))
        es.tell(torch.arange(8.0))


@MADE_UP_FITNESS
@pytest.mark.parametrize(
    "examples, batch", [(10, 0), (10, 11), (0, 0), (10.0, 2), (10, True), (10, torch.tensor(True)), ("10", 2)]
)
def test_population_minibatch_refuses_a_size_that_is_no_batch_of_the_examples(examples: object, batch: object) -> None:
    """A batch of no examples, one larger than the data set, or sizes that are not integers (a bool, also a 0-d bool
    tensor, which ``operator.index`` takes as 0 or 1) are a ValueError naming both values and what to pass, not a
    truncated or empty batch."""
    es = flipes.FlipES(mlp(0), popsize=4, sigma=0.1)
    with es.population() as pop:
        with pytest.raises(ValueError, match=r"pop\.minibatch\(examples, batch\): .*1 <= batch <= examples.*len\(dataset\)"):
            pop.minibatch(examples, batch)
        pop.minibatch(10, 3)
    es.tell(torch.arange(4.0))


def test_per_member_draws_indexed_by_the_members_are_those_of_one_pass() -> None:
    """Draws of one value per member made as the README says, ``torch.randn(pop.popsize, generator=g)[pop.members]``,
    give each member in a part (or on a process) the value it has in the whole population."""
    es = flipes.FlipES(mlp(0), popsize=8, sigma=0.1, groups=2)
    with es.population() as pop:
        whole = torch.randn(pop.popsize, generator=pop.generator())[pop.members]
        parts = torch.cat([torch.randn(p.popsize, generator=p.generator())[p.members] for p in pop.split(3)])
    assert whole.shape == (8,) and torch.equal(parts, whole)


def test_an_earlier_generations_pop_refuses_to_draw_inside_a_later_population() -> None:
    """``pop.generator()`` (or ``pop.minibatch()``) of a generation's ``pop`` (or one of its parts) kept and called inside
    the next generation's population is a RuntimeError naming the stale generation and the fix, where it would repeat the
    old minibatch; after ``tell`` outside any population it still gives that generation's draws, as does the current
    ``pop``."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, sigma=0.1, groups=2)
    with es.population() as old:
        first = torch.randn(3, generator=old.generator())
        fitness = model(torch.randn(old.size, 6))[:, 0]
        part = next(iter(old.split(4)))
    es.tell(fitness)
    assert torch.equal(torch.randn(3, generator=old.generator()), first)  # outside: that generation's draws, for a log
    with es.population() as pop:
        for stale in (old, part):
            with pytest.raises(RuntimeError, match=r"^pop.generator\(\) of generation 0, inside a later .*as pop:`$"):
                stale.generator()
            with pytest.raises(RuntimeError, match=r"^pop.minibatch\(\) of generation 0, inside a later "):
                stale.minibatch(10, 2)
        assert not torch.equal(torch.randn(3, generator=pop.generator()), first) and pop.generation == 1


def test_a_pass_fail_fitness_is_refused_naming_float() -> None:
    """An exact-match fitness of True/False per member (a bool tensor or list) is a TypeError that names
    ``fitness.float()``; its 0/1 values as numbers are taken."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    with es.population() as pop:
        passed = model(torch.randn(pop.size, 6))[:, 0] > 0
    for bad in (passed, passed.tolist()):
        with pytest.raises(TypeError, match=r"of torch.bool; .*fitness.float\(\)"):
            es.tell(bad)
    es.tell(passed.float())
    assert es.generation == 1


def test_a_fitness_tensor_without_dense_values_is_refused_naming_the_fix() -> None:
    """A sparse, nested or meta fitness tensor is a TypeError naming its kind and the fix (to_dense, stack, values)
    before anything is shaped, not torch's NotImplementedError or internal error from deep in the shaping or the copy;
    the generation is not ended, and the dense values are taken."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    with es.population() as pop:
        fitness = model(torch.randn(pop.size, 6))[:, 0].detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the nested tensor's prototype-stage warning
        nested = torch.nested.nested_tensor(list(fitness.unsqueeze(1)))
    for bad, named in ((fitness.to_sparse(), "a sparse tensor; fitness.to_dense()"), (nested, "a nested tensor; .*torch.stack"),
                       (torch.zeros(8, device="meta"), "a meta tensor; compute it from tensors that hold values")):  # fmt: skip
        with pytest.raises(TypeError, match=rf"^fitness must be real numbers, one per member, got {named}"):
            es.tell(bad)
    assert es.generation == 0
    es.tell(fitness)
    assert es.generation == 1


def test_a_list_of_the_parts_fitness_tensors_is_refused_naming_torch_cat() -> None:
    """The parts' fitness tensors handed to ``tell`` as a list, uncatenated (``[f(part) for part in pop.split(k)]``),
    is a TypeError naming their shapes and ``torch.cat``, and changes nothing; the catenated tensor is taken."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    with es.population() as pop:
        parts = [model(torch.randn(part.size, 6))[:, 0] for part in pop.split(4)]
    with pytest.raises(TypeError, match=r"got list of 2 tensors, shapes \(4,\), \(4,\); .*torch.cat\(fitness\)$"):
        es.tell(parts)
    assert es.generation == 0
    es.tell(torch.cat(parts))
    assert es.generation == 1


@MADE_UP_FITNESS
def test_tell_stats_are_the_fitness_moments_gradient_norm_and_update_ratio() -> None:
    """``tell``'s stats against their definitions, computed here from the fitness, the ``.grad`` it
    wrote (-ĝ) and the parameters before and after the optimizer step: fitness mean/max/min and
    population std, ‖ĝ‖, ‖Δθ‖/‖θ_after‖, σ and the generation just finished."""
    torch.manual_seed(0)
    model = mlp(0).double()
    es = flipes.FlipES(model, popsize=16, sigma=0.07, seed=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.3))
    for generation in range(2):
        before = torch.cat([p.detach().flatten().clone() for p in es.params])
        with es.population():
            pass
        f = torch.randn(16, dtype=DT)
        stats = es.tell(f)
        after = torch.cat([p.detach().flatten() for p in es.params])
        grad = torch.cat([p.grad.flatten() for p in es.params])
        torch.testing.assert_close(after, before - 0.3 * grad, atol=1e-15, rtol=0)  # the step the stats describe
        assert stats["generation"] == generation and stats["sigma"] == 0.07
        assert (stats["fitness_max"], stats["fitness_min"]) == (f.max().item(), f.min().item())
        assert stats["fitness_mean"] == pytest.approx(f.mean().item(), rel=1e-14, abs=1e-15)
        assert stats["fitness_std"] == pytest.approx(f.std(unbiased=False).item(), rel=1e-12)
        assert stats["grad_norm"] == pytest.approx(grad.norm().item(), rel=1e-12)
        assert stats["update_ratio"] == pytest.approx(((after - before).norm() / after.norm()).item(), rel=1e-12)


def test_a_model_moved_to_another_dtype_after_a_tell_is_named_and_the_fix_works() -> None:
    """model.double() before the first tell works; after one (Adam's moments exist in float32) the next tell is a
    RuntimeError naming the parameter, both dtypes and the fix, not torch's 'expected scalar type Double but found
    Float'; nothing changed at the refused tell, and the fix it names (a new FlipES for the moved model, loading
    the old one's state) continues with the optimizer's state in float64."""

    def fitness64(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        x = torch.randn(pop.size, 6, generator=pop.generator(), dtype=next(model.parameters()).dtype)
        return -model(x).square().sum(-1)

    early = mlp(0)
    es = flipes.FlipES(early, popsize=8, seed=1)
    early.double()
    es.step(fitness64)
    assert next(early.parameters()).dtype == torch.float64
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, seed=1)
    es.step(fitness64)
    model.double()
    with es.population() as pop:
        values = fitness64(model, pop)
    before = [p.clone() for p in params(model)]
    with pytest.raises(RuntimeError, match=r"0\.weight moved to torch\.float64 on cpu after .*\(torch\.float32 on cpu\); .*"):
        es.tell(values)
    assert es.generation == 1 and all(torch.equal(p, q) for p, q in zip(params(model), before, strict=True))
    moved = flipes.FlipES(model, popsize=8, seed=1)
    moved.load_state_dict(es.state_dict())
    moved.step(fitness64)
    assert moved.generation == 2 and all(s["exp_avg"].dtype == torch.float64 for s in moved.optimizer.state.values())


@pytest.mark.parametrize("how", ["attribute", "load_state_dict", "module"])
def test_parameters_replaced_after_the_flipes_was_built_are_named_and_copying_values_in_place_works(how: str) -> None:
    """A model whose Parameter objects were replaced after FlipES was built (a new ``nn.Parameter`` assigned,
    ``load_state_dict(..., assign=True)``, a layer replaced) would run the new values while ``tell`` steps the old
    ones: population() and tell() raise a ValueError naming the parameters and the in-place fix; loading the same
    values in place (the fix) evaluates and updates them."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, seed=1)
    state = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    if how == "attribute":
        model[0].weight = nn.Parameter(state["0.weight"])
    elif how == "module":
        model[2] = flipes.flipout(nn.Linear(16, 3))
    else:
        model.load_state_dict(state, assign=True)
    names = {"attribute": r"0\.weight", "module": r"2\.weight, 2\.bias"}.get(how, r"0\.weight, 0\.bias, 2\.weight, 2\.bias")
    with pytest.raises(ValueError, match=rf"parameter\(s\) {names} are other Parameter objects .*load_state_dict without assign"):
        with es.population():
            pass
    with pytest.raises(ValueError, match="other Parameter objects"):
        es.tell(torch.randn(8))
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, seed=1)
    model.load_state_dict(state)
    es.step(lambda m, pop: -m(torch.randn(pop.size, 6, generator=pop.generator())).square().sum(-1))
    assert es.generation == 1 and not torch.equal(model[0].weight, state["0.weight"])


def test_load_state_dict_inside_a_population_is_refused_and_changes_nothing() -> None:
    """A roll-back cell (``es.load_state_dict(snapshot)``) run inside ``with es.population()`` raises a RuntimeError
    naming the fix and changes nothing: the block's tell ends its generation with the parameters, bit for bit, of a
    FlipES that never tried, and the snapshot loads after tell (it would otherwise leave a population of generation 2
    that no tell could end)."""
    a, b = (flipes.FlipES(mlp(0), popsize=8, sigma=0.1, seed=1) for _ in range(2))
    a.step(fitness)
    b.step(fitness)
    snapshot = copy.deepcopy(a.state_dict())
    a.step(fitness)
    b.step(fitness)
    with a.population() as pop:
        with pytest.raises(RuntimeError, match=r"load_state_dict\(\) inside `with es.population\(\)`: .*generation 2's; leave"):
            a.load_state_dict(snapshot)
        values = fitness(a.model, pop)
    a.tell(values)
    b.step(fitness)
    assert a.generation == b.generation == 3
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    a.load_state_dict(snapshot)
    assert a.generation == 1


def test_load_state_dict_of_another_model_is_refused_before_any_parameter_changes() -> None:
    """A state saved from a model whose last layer is another size is refused with a ValueError naming the first
    mismatch, and the model keeps every parameter, also the first layer's, which fits (torch's load_state_dict copies
    the tensors that fit before it raises)."""
    saved = flipes.FlipES(mlp(0), popsize=8, sigma=0.1, seed=1)
    saved.step(fitness)
    torch.manual_seed(1)
    other = flipes.FlipES(flipes.flipout(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))), popsize=8, seed=1)
    before = [p.clone() for p in other.model.parameters()]
    with pytest.raises(ValueError, match=r"nothing was loaded.*\n\tsize mismatch for 2.weight: \(3, 16\) saved, \(4, 16\)"):
        other.load_state_dict(saved.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(other.model.parameters(), before, strict=True))
    assert other.generation == 0


def test_load_state_dict_in_a_population_before_any_forward_is_refused_without_held_noise() -> None:
    """With ``hold_noise=False`` no noise is installed until the block's first forward: a load_state_dict there is
    refused all the same (a RuntimeError, generation unchanged), and the block's tell then ends generation 2."""
    es = flipes.FlipES(mlp(0), popsize=8, sigma=0.1, seed=1, hold_noise=False)
    es.step(fitness)
    snapshot = copy.deepcopy(es.state_dict())
    es.step(fitness)
    with es.population() as pop:
        with pytest.raises(RuntimeError, match=r"load_state_dict\(\) inside `with es.population\(\)`"):
            es.load_state_dict(snapshot)
        assert es.generation == 2
        values = fitness(es.model, pop)
    es.tell(values)
    assert es.generation == 3


@pytest.mark.parametrize("convert", [False, True])
def test_a_layer_added_after_the_flipes_was_built_is_named_and_a_new_flipes_trains_it(convert: bool) -> None:
    """A notebook cell that appends a layer to a model whose FlipES exists (and, re-run, converts it again) would
    leave the new parameters neither perturbed nor stepped: population() and tell() raise a ValueError naming them and
    the fix, a new FlipES; a frozen layer appended is fine; the new FlipES steps the added layer's weight."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, seed=1)
    es.step(fitness)
    model.append(nn.Linear(3, 3).requires_grad_(False))  # frozen: nothing to train, the old FlipES goes on
    es.step(fitness)
    model.append(nn.Linear(3, 3))
    if convert:
        flipes.flipout(model)
    with pytest.raises(ValueError, match=r"gained trainable parameter\(s\) 4\.weight, 4\.bias after .*new FlipES"):
        with es.population():
            pass
    with pytest.raises(ValueError, match="gained trainable parameter"):
        es.tell(torch.randn(8))
    assert es.generation == 2
    before = model[4].weight.detach().clone()
    es = flipes.FlipES(flipes.flipout(model), popsize=8, seed=1)
    es.step(fitness)
    assert es.generation == 1 and not torch.equal(model[4].weight, before)


def test_a_parameter_put_in_a_slot_that_held_none_at_build_is_refused() -> None:
    """A bias given later to a layer built without one (``layer.bias = nn.Parameter(...)``: its slot held None, so
    no dict grew) is neither perturbed nor stepped: the next generation raises a ValueError naming it, as for a layer
    appended, and the generation count stays."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3, bias=False)))
    es = flipes.FlipES(model, popsize=8, seed=1)
    es.step(fitness)
    model[2].bias = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"gained trainable parameter\(s\) 2\.bias after"):
        es.step(fitness)
    assert es.generation == 1


def test_a_module_swapped_out_is_freed_and_a_parameter_replaced_after_is_still_refused() -> None:
    """An activation swapped in a notebook cell (``model[1] = nn.ReLU()``: nothing to refuse) is not kept alive by the
    FlipES (no reference left after the next generation and a garbage collection), and a weight replaced by a new
    ``nn.Parameter`` after that is still refused by name."""
    model = mlp(0)
    es = flipes.FlipES(model, popsize=8, seed=1)
    es.step(fitness)
    old = weakref.ref(model[1])
    model[1] = nn.ReLU()
    es.step(fitness)
    gc.collect()
    assert old() is None
    model[2].weight = nn.Parameter(model[2].weight.detach().clone())
    with pytest.raises(ValueError, match=r"parameter\(s\) 2\.weight are other Parameter objects"):
        es.step(fitness)


def test_a_flipes_pickled_before_the_added_layer_check_steps_and_refuses_a_layer_added_later() -> None:
    """A FlipES unpickled from a state without the module sizes (as a flipes before the check pickled it) steps
    as the original does, bit for bit, and refuses a trainable layer appended to its model afterwards."""
    es = flipes.FlipES(mlp(0), popsize=8, seed=1)
    state = es.__getstate__()
    del state["_held_sizes"]
    older = flipes.FlipES.__new__(flipes.FlipES)
    older.__setstate__(pickle.loads(pickle.dumps(state)))
    older.step(fitness)
    es.step(fitness)
    assert all(torch.equal(p, q) for p, q in zip(es.model.parameters(), older.model.parameters(), strict=True))
    older.model.append(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"gained trainable parameter\(s\) 3\.weight, 3\.bias"):
        older.step(fitness)


@pytest.mark.parametrize("shaping", [centered_ranks, z_score, flipes.shaping.ars])
def test_minimizing_a_loss_steps_exactly_as_maximizing_its_negation(shaping) -> None:
    """``maximize=False`` takes a loss: every generation's parameters are bit-identical to those of a
    FlipES told the negated loss; the returned statistics and ``es.best`` (the lowest loss, its generation
    and member) are of the loss as told; the option is part of the state dict's configuration."""

    def loss(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        return -fitness(model, pop)

    def make(maximize: bool) -> flipes.FlipES:
        options = {"shaping": shaping, "track_best": True, "maximize": maximize}
        return flipes.FlipES(mlp(0), popsize=16, sigma=0.1, lr=0.05, groups=2, **options)

    low, high = make(False), make(True)
    lowest = None
    for generation in range(5):
        with low.population() as pop:
            values = loss(low.model, pop)
        with high.population() as pop:
            negated = fitness(high.model, pop)
        assert torch.equal(values, -negated)
        i = int(values.argmin())
        if lowest is None or values[i] < lowest[0]:
            lowest = (values[i].item(), generation, i)
        stats = low.tell(values)
        high.tell(negated)
        assert all(torch.equal(a, b) for a, b in zip(low.model.parameters(), high.model.parameters(), strict=True))
        assert (stats["fitness_mean"], stats["fitness_min"]) == (values.double().mean().item(), values.min().item())
        assert (low.best.fitness, low.best.generation, low.best.index) == lowest
    with pytest.raises(ValueError, match="maximize: saved False, now True"):
        make(True).load_state_dict(low.state_dict())
    with pytest.raises(TypeError, match="maximize must be True or False"):
        flipes.FlipES(mlp(0), popsize=16, maximize="min")


@pytest.mark.parametrize("sigma_lr", [0.0, 0.2])
@pytest.mark.parametrize("comm_mode", ["allreduce", "seeds"])
def test_processes_sharing_the_groups_step_as_one_process(comm_mode: str, sigma_lr: float) -> None:
    """Three processes (threads exchanging through the Comm protocol), each evaluating its block of 2 of 6 ε groups
    (24 mirrored members), end 3 generations of SGD with the parameters and the adaptive log σ of one process holding
    every group: to float64 rounding (1e-12 relative) where each process's sums over its own members are added up
    (``allreduce``), bit for bit where each sums all groups from the seeds (``seeds``); divided by the whole population.
    Each generation, ``allreduce`` sums the gradient (and the log σ gradient) over the processes and ``seeds`` nothing."""
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.LayerNorm(3)).to(DT)
    x, target = torch.randn(24, 5, dtype=DT), torch.randn(3, dtype=DT)

    def run(comm: object | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        model = flipes.flipout(copy.deepcopy(initial))
        es = flipes.FlipES(
            model, popsize=24, sigma=0.1, groups=6, seed=2, sigma_lr=sigma_lr, comm=comm, comm_mode=comm_mode,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        )  # fmt: skip
        for _ in range(3):
            with es.population() as pop:
                fitness = -(model(x[pop.members.start : pop.members.stop]) - target).square().sum(1)
            es.tell(fitness)
        return [p.detach().clone() for p in model.parameters()], es.log_sigma

    expected = run()
    assert all(not torch.equal(a, b) for a, b in zip(expected[0], initial.parameters(), strict=True))  # it moved
    comms: list = [None] * 3

    def process(comm: object) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        comms[comm.rank] = comm  # type: ignore[attr-defined]
        return run(comm)

    results = run_thread_ranks(process, 3)
    for rank, result in enumerate(results):
        if isinstance(result, BaseException):
            raise AssertionError(f"process {rank} failed") from result
        params, log_sigma = result
        tolerance = {"rtol": 0, "atol": 0} if comm_mode == "seeds" else {"rtol": 1e-12, "atol": 1e-14}
        for got, want in zip(params, expected[0], strict=True):
            torch.testing.assert_close(got, want, **tolerance)
        if sigma_lr:
            torch.testing.assert_close(log_sigma, expected[1], **tolerance)
        # allreduce computing every group itself, as seeds does, passes the comparison above: what was summed tells them apart
        sums = [sum(p.numel() for p in initial.parameters())] + ([log_sigma.numel()] if sigma_lr else [])
        assert comms[rank].summed == (sums * 3 if comm_mode == "allreduce" else []), comms[rank].summed


@pytest.mark.parametrize("hold_noise", [True, False])
def test_tell_frees_the_noise_and_the_last_gradient_before_it_needs_memory_of_its_own(hold_noise: bool) -> None:
    """Each of these is a copy of the parameters, which for an LLM is gigabytes: ``tell`` drops the previous
    generation's gradient (``p.grad``) before it computes the new one, with ``hold_noise=False`` each block's noise
    before it samples the next, and the generation's noise (a copy of every Flipout weight per ε group) and its
    per-parameter sums before the optimizer steps, also while the loop's ``pop`` is still referenced. Checked by weak
    references (CPython frees a tensor at its last reference): none of them is alive at those points, and the
    parameters end as a plain SGD run's (bit for bit: only lifetimes changed)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    seen: dict[str, list[bool]] = {"old grad at the gradient": [], "noise at the step": [], "last block's noise": []}
    refs: dict[str, list[weakref.ref]] = {"grad": [], "noise": []}

    class Checked(torch.optim.SGD):
        def step(self, closure: Callable | None = None) -> None:
            seen["noise at the step"] += [r() is not None for r in refs["noise"]]
            refs["noise"].clear()
            return super().step(closure)

    def fitness(x: torch.Tensor) -> torch.Tensor:
        return -model(x).square().mean((1, 2))

    def run(check: bool) -> list[torch.Tensor]:
        nonlocal model
        model = flipes.flipout(copy.deepcopy(net))
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=3, groups=4, hold_noise=hold_noise,
                           optimizer=lambda p: (Checked if check else torch.optim.SGD)(p, lr=0.05, momentum=0.9))  # fmt: skip
        block_gradient = es._block_gradient

        def watched(*args: object) -> object:
            seen["old grad at the gradient"] += [r() is not None for r in refs["grad"]]
            refs["grad"].clear()
            noise = args[0]
            refs["noise"][:] = [weakref.ref(t) for nz in noise[0] for t in (nz.eps, nz.s, nz.r) if t is not None]
            return block_gradient(*args)

        sample = es._sample

        def sampling(*args: object) -> object:  # in tell with hold_noise=False: the next of 4 blocks
            seen["last block's noise"] += [r() is not None for r in refs["noise"]]
            return sample(*args)

        if check:
            es._block_gradient, es._sample = watched, sampling
        x = torch.randn(8, 5, 6, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            with es.population() as pop:
                f = torch.cat([fitness(x[list(part.members)]) for part in pop.split(2)])
            es.tell(f)
            refs["grad"][:] = [weakref.ref(p.grad) for p in model.parameters()]
        return [p.detach().clone() for p in model.parameters()]

    model: nn.Module = net
    checked, reference = run(check=True), run(check=False)
    assert seen["old grad at the gradient"] and not any(seen["old grad at the gradient"])
    assert seen["noise at the step"] and not any(seen["noise at the step"])
    assert bool(seen["last block's noise"]) != hold_noise and not any(seen["last block's noise"])
    for a, b in zip(checked, reference, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("groups", [1, 6])
def test_sgd_at_lr_alpha_times_sigma_with_z_scores_takes_the_step_of_es_at_scale(groups: int) -> None:
    """README's mapping from Qiu et al. (2025, ES fine-tuning of LLMs), whose step is θ ← θ + α/N Σ_n z_n ε_n (z the
    z-scored rewards, ε_n = (θ_n − θ)/σ member n's standard-normal noise, no 1/σ): FlipES with ``shaping=z_score``,
    ``mirrored=False`` and SGD at ``lr = α·σ`` takes exactly that step, to 1e-12 in float64, with one ε group (Flipout)
    and with one per member (independent noise, as the paper)."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double())
    n, sigma, alpha = 6, 1e-3, 5e-4
    es = flipes.FlipES(model, popsize=n, sigma=sigma, groups=groups, mirrored=False, shaping=z_score, seed=4,
                       optimizer=lambda params: torch.optim.SGD(params, lr=alpha * sigma))  # fmt: skip
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with es.population():
        members = [es.member_parameters(i) for i in range(n)]
    reward = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    es.tell(reward)
    z = (reward - reward.mean()) / reward.std(unbiased=False)
    for name, p in model.named_parameters():
        eps = [(members[i][name] - before[name]) / sigma for i in range(n)]
        expect = before[name] + alpha / n * sum(z[i] * eps[i] for i in range(n))
        torch.testing.assert_close(p.detach(), expect, atol=1e-12, rtol=0)


@pytest.mark.parametrize("hold_noise", [True, False])
def test_a_tell_that_raised_after_freeing_the_noise_can_be_called_again(hold_noise: bool) -> None:
    """A tell interrupted after it freed the generation's noise and before the optimizer stepped (a Ctrl-C, an
    out-of-memory error in the step's allocations) left the parameters and the generation as they were; calling
    tell again with the same fitness draws the noise again from the seeds and ends with the parameters of a run
    never interrupted, bit for bit (as when tell still held the noise), instead of saying no population was
    evaluated; es.member_parameters still builds the members evaluated."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    x = torch.randn(8, 5, 6, generator=torch.Generator().manual_seed(1))

    def run(interrupt: bool) -> list[torch.Tensor]:
        model = flipes.flipout(copy.deepcopy(net))
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=3, groups=4, hold_noise=hold_noise, lr=0.05)
        for gen in range(3):
            with es.population() as pop:
                f = torch.cat([-model(x[list(part.members)]).square().mean((1, 2)) for part in pop.split(2)])
            if interrupt and gen == 1:
                step = es.optimizer.step

                def stopped(*args: object, **kwargs: object) -> None:
                    raise KeyboardInterrupt

                es.optimizer.step = stopped  # type: ignore[method-assign]
                member = es.member_parameters(5)
                with pytest.raises(KeyboardInterrupt):
                    es.tell(f)
                es.optimizer.step = step  # type: ignore[method-assign]
                assert es.generation == 1
                for name, value in es.member_parameters(5).items():  # the member evaluated, still
                    assert torch.equal(value, member[name]), name
            es.tell(f)
        assert es.generation == 3
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(interrupt=True), run(interrupt=False), strict=True):
        assert torch.equal(a, b)
