"""FlipES against a plain-torch OpenAI-ES step, and what a script ported from another ES library is told."""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
from torch import nn

import flipes
from flipes.search import SigmaDecay

DT = torch.float64


def centered_ranks_by_hand(f: torch.Tensor) -> torch.Tensor:
    """Salimans et al. (2017)'s centered ranks ``rank / (N - 1) - 1/2``, a tied value's rank the mean of the ranks its
    run of ties takes, counted in Python numbers."""
    values = f.tolist()
    ranks = [sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]
    return torch.tensor(ranks, dtype=DT) / (len(values) - 1) - 0.5


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "clipup": lambda p: flipes.optim.ClipUp(p, lr=0.05, max_speed=0.08),
    "adam": lambda p: torch.optim.Adam(p, lr=0.1),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize(
    ("n", "mirrored", "maximize", "weight_decay", "decay", "ties"),
    [
        (6, True, True, 0.0, False, False),
        (6, True, False, 0.3, True, True),
        (7, False, True, 0.3, True, False),
        (7, False, False, 0.0, False, True),
        (8, False, False, 0.3, True, True),
    ],
)
def test_tell_is_the_openai_es_step_written_out_per_member(
    optimizer: str, n: int, mirrored: bool, maximize: bool, weight_decay: float, decay: bool, ties: bool
) -> None:
    """Three generations of a float64 linear model: the population's outputs are each member's ``x (W̄ + σu_n)ᵀ + b̄ +
    σu_b`` with ``σu_n`` from ``es.member_noise`` (mirrored twins exactly ``-σu``), and each ``tell`` writes ``.grad =
    -1/(Nσ) Σ_n F̂_n u_n + λθ`` with ``F̂`` the centered ranks of the fitness (of its negation when ``maximize=False``,
    ties sharing their mean rank), at the schedule's σ, to rounding (1e-13 of the largest entry). With that gradient a
    torch optimizer of its own steps a plain copy of the parameters to the same values (SGD, with momentum, ClipUp: to
    1e-14; Adam, whose first steps are ``±lr`` for a gradient entry that cancels to rounding: its gradient alone)."""
    torch.manual_seed(0)
    plain = nn.Linear(5, 3).to(DT)
    model = flipes.flipout(plain)
    x = torch.randn(5, dtype=DT)
    sigma = SigmaDecay(0.1, 0.8, 0.07) if decay else 0.1
    factory = OPTIMIZERS[optimizer]
    es = flipes.FlipES(
        model, popsize=n, sigma=sigma, seed=3, mirrored=mirrored, maximize=maximize, weight_decay=weight_decay,
        optimizer=factory,
    )  # fmt: skip
    names = [name for name, _ in model.named_parameters()]
    ref = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    ref_opt = factory(ref)
    for generation in range(3):
        with es.population():
            y = model(x.expand(n, 5))
            noise = [es.member_noise(i) for i in range(n)]
        s = sigma(generation) if callable(sigma) else sigma
        w, b = (p.detach() for p in ref)
        explicit = torch.stack([x @ (w + u["weight"]).T + b + u["bias"] for u in noise])
        torch.testing.assert_close(y, explicit, rtol=0, atol=1e-13)
        if mirrored:
            assert all(torch.equal(noise[k + 1][m], -noise[k][m]) for k in range(0, n, 2) for m in names)
        fitness = -(explicit**2).sum(1)
        if ties:
            fitness = (fitness * 2).round() / 2  # a handful of levels: runs of ties
        shaped = centered_ranks_by_hand(fitness)
        for p, name in zip(ref, names, strict=True):
            g_hat = sum(shaped[i] * noise[i][name] / s for i in range(n)) / (n * s)
            p.grad = -g_hat + weight_decay * p.detach()
        ref_opt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a whole population tied is warned of: not the point here
            es.tell(fitness if maximize else -fitness)
        for p, r in zip(model.parameters(), ref, strict=True):
            assert (p.grad - r.grad).abs().max() <= 1e-13 * r.grad.abs().max()
            if optimizer != "adam":
                torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=1e-14)


def model() -> nn.Module:
    return flipes.flipout(nn.Linear(3, 2))


@pytest.mark.parametrize(
    ("keyword", "fix"),
    [
        ("sigma_init", "sigma_init= is evosax's name; FlipES takes sigma="),
        ("stdev_init", "stdev_init= is EvoTorch's name; FlipES takes sigma="),
        ("sigma_decay", "FlipES takes sigma=flipes.search.SigmaDecay(sigma, decay, min)"),
        ("lrate_init", "lrate_init= is evosax's name; FlipES takes lr="),
        ("lrate_decay", "torch.optim.lr_scheduler.ExponentialLR(es.optimizer, decay)"),
        ("objective_sense", 'FlipES takes maximize=False for "min"'),
        ("center_learning_rate", "flipes.optim.ClipUp(p, lr=c, max_speed=2 * c)"),
        ("symmetric", "FlipES takes mirrored="),
        ("pop_size", "FlipES takes popsize="),
        ("w_decay", "FlipES takes weight_decay="),
        ("sigam", "did you mean sigma=, sigma_lr=?"),
    ],
)
def test_other_libraries_keywords_name_flipes_argument(keyword: str, fix: str) -> None:
    """``FlipES(model, popsize=8, <evosax's or EvoTorch's name>=...)`` (and a misspelling) is a TypeError in one line
    that names the keyword and FlipES's argument for it, not Python's bare "unexpected keyword argument"."""
    with pytest.raises(TypeError, match=rf"^FlipES\(\) got an unexpected keyword argument '{keyword}': ") as refused:
        flipes.FlipES(model(), popsize=8, **{keyword: 0.1})
    assert fix in str(refused.value) and "\n" not in str(refused.value)


def test_flipes_signature_and_copies_are_its_init() -> None:
    """``inspect.signature(flipes.FlipES)`` (``help()``, call tips) lists ``__init__``'s arguments, not ``__new__``'s
    ``(*args, **kwargs)``; an unknown keyword without a fix is Python's own error; a deep copy still builds."""
    params = list(inspect.signature(flipes.FlipES).parameters)
    assert params[:3] == ["model", "popsize", "sigma"] and "maximize" in params
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'zzz'$"):
        flipes.FlipES(model(), popsize=8, zzz=1)
    es = flipes.FlipES(model(), popsize=8, sigma=0.1)
    assert copy.deepcopy(es).popsize == 8


@pytest.mark.parametrize(
    ("option", "name", "fix"),
    [
        ("optimizer", "adam", "optimizer=torch.optim.Adam (built at lr=)"),
        ("optimizer", "clipup", "optimizer=flipes.optim.ClipUp (built at lr=)"),
        ("optimizer", "SGD", "lambda params: torch.optim.SGD(params, lr=...)"),
        ("shaping", "centered_rank", "shaping=flipes.shaping.centered_ranks"),
        ("shaping", "z-score", "shaping=flipes.shaping.z_score"),
    ],
)
def test_an_optimizer_or_shaping_named_by_a_string_names_the_object(option: str, name: str, fix: str) -> None:
    """``FlipES(..., optimizer="adam")`` (evosax's ``opt_name``, EvoTorch's ``optimizer="clipup"``) or
    ``shaping="centered_rank"`` is a TypeError naming the object to pass, not only that a string is no function."""
    with pytest.raises(TypeError, match=rf"^{option} must be a function .*, got the name '{name}': pass ") as refused:
        flipes.FlipES(model(), popsize=8, **{option: name})
    assert fix in str(refused.value)
