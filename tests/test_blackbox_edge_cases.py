"""Black-box search over ``flipes.nn.Vector`` at its edges: the first step of every shaping, objective sense and shape of
start is the ES estimate written out on each member's ``es.member_noise(i)``; a constant fitness moves nothing under
any search rule (no NaN, no σ change, finite stats); minimizing steps as maximizing the negation under the rules with
state (adaptive σ, ClipUp, unmirrored raw, ARS); a fitness given as float64, numpy or a list steps as the float32
tensor."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import pytest
import torch

import flipes
from flipes.search import clipup

DT = torch.float64
SHAPINGS = {
    "centered_ranks": flipes.shaping.centered_ranks,
    "z_score": flipes.shaping.z_score,
    "raw": flipes.shaping.raw,
    "ars_top2": functools.partial(flipes.shaping.ars, top=2),
}


@pytest.mark.parametrize("shape", [(1,), (2, 3), ()], ids=["one", "matrix", "scalar"])
@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("name", list(SHAPINGS))
def test_the_first_step_is_the_shaped_es_estimate_on_each_members_noise(name: str, maximize: bool, shape: tuple) -> None:
    """With SGD, the step from a start of one entry, a matrix or a 0-d value is ``lr · Σ_n w_n u_n / (Nσ)``, ``w`` the
    shaping of the fitness (of minus the loss when minimizing) and ``u_n`` member n's noise over σ, to 1e-14."""
    popsize, sigma, lr = 8, 0.3, 0.1
    x = flipes.flipout(flipes.nn.Vector(torch.linspace(-1.0, 2.0, math.prod(shape), dtype=DT).reshape(shape)))
    shaping = SHAPINGS[name]
    opt = functools.partial(torch.optim.SGD, lr=lr)
    es = flipes.FlipES(x, popsize=popsize, sigma=sigma, seed=4, maximize=maximize, shaping=shaping, optimizer=opt)
    theta = x.value.detach().clone()
    with es.population():
        members = x().reshape(popsize, -1)
    u = torch.stack([es.member_noise(i)["value"] for i in range(popsize)]) / sigma
    loss = members.square().sum(1) + members[:, 0]
    es.tell(-loss if maximize else loss)
    weights = shaping(-loss).to(DT)
    expected = theta + lr * torch.einsum("n,n...->...", weights, u) / (popsize * sigma)
    assert x.value.shape == shape
    torch.testing.assert_close(x.value.detach(), expected, atol=1e-14, rtol=0)


RULES: dict[str, Callable[[], dict]] = {
    "openai-es": lambda: {"lr": 0.05},
    "z_score": lambda: {"lr": 0.05, "shaping": flipes.shaping.z_score},
    "raw": lambda: {"lr": 0.05, "shaping": flipes.shaping.raw},
    "ars": lambda: {"shaping": functools.partial(flipes.shaping.ars, top=2), "optimizer": torch.optim.SGD, "lr": 0.01},
    "pgpe": lambda: {"optimizer": lambda p: clipup(p, max_speed=0.2, lr=0.1), "sigma_lr": 0.2},
    "sigma_lr": lambda: {"lr": 0.05, "sigma_lr": 0.2},
}


@pytest.mark.parametrize("start", [torch.ones(3), torch.zeros(3)], ids=["ones", "zeros"])
@pytest.mark.parametrize("rule", list(RULES))
def test_a_constant_fitness_moves_nothing_under_every_search_rule(rule: str, start: torch.Tensor) -> None:
    """All members equal (a plateau, or a loss of exactly 0 everywhere): the parameters and σ stay as they were
    (σ to an ulp: it is kept as log σ), grad_norm and update_ratio are 0, at a start of ones and of zeros alike, and
    the first generation warns that the gradient holds no signal (once, not every generation)."""
    x = flipes.flipout(flipes.nn.Vector(start.clone()))
    es = flipes.FlipES(x, popsize=8, sigma=0.1, seed=0, **RULES[rule]())
    for generation in range(3):
        with es.population():
            fitness = torch.zeros(8)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            stats = es.tell(fitness)
        assert [type(w.message) for w in seen] == ([flipes.EqualFitnessWarning] if generation == 0 else [])
        assert stats["grad_norm"] == 0.0 and stats["update_ratio"] == 0.0 and stats["fitness_std"] == 0.0
        assert stats["sigma"] == pytest.approx(0.1, rel=1e-15, abs=0)
    assert torch.equal(x.value.detach(), start)


@pytest.mark.parametrize("rule", ["pgpe", "sigma_lr", "raw_unmirrored", "ars"])
def test_minimizing_steps_as_maximizing_the_negation_under_rules_with_state(rule: str) -> None:
    """``maximize=False`` told a bumpy Rosenbrock loss and ``maximize=True`` told its negation take bit-identical steps and
    σ over 6 generations, under adaptive σ, ClipUp, raw shaping without mirroring and ARS; ``es.best`` is the lowest
    loss, at the same generation and member, as the other's highest fitness."""
    kwargs = {
        "pgpe": {"optimizer": lambda p: clipup(p, max_speed=0.2, lr=0.1), "sigma_lr": 0.2},
        "sigma_lr": {"lr": 0.05, "sigma_lr": 0.2},
        "raw_unmirrored": {"shaping": flipes.shaping.raw, "mirrored": False, "optimizer": torch.optim.SGD, "lr": 1e-5},
        "ars": {"shaping": functools.partial(flipes.shaping.ars, top=3), "optimizer": torch.optim.SGD, "lr": 1e-5},
    }[rule]
    runs = []
    for maximize in (True, False):
        x = flipes.flipout(flipes.nn.Vector(torch.tensor([-1.0, 1.5, 0.5, 0.0], dtype=DT)))
        es = flipes.FlipES(x, popsize=12, sigma=0.1, seed=3, maximize=maximize, track_best=True, **kwargs)
        sigmas = []
        for _ in range(6):
            with es.population():
                v = x()
                rosenbrock = (100 * (v[:, 1:] - v[:, :-1] ** 2) ** 2 + (1 - v[:, :-1]) ** 2).sum(1)
                loss = rosenbrock + 100 * (5 * v).sin().sum(1)  # bumps: ARS's top pairs by the best and worst differ
            sigmas.append(es.tell(-loss if maximize else loss)["sigma"])
        runs.append((x.value.detach(), sigmas, es.best))
    (up, up_sigmas, up_best), (down, down_sigmas, down_best) = runs
    assert torch.equal(up, down) and up_sigmas == down_sigmas
    assert (down_best.fitness, down_best.generation, down_best.index) == (-up_best.fitness, up_best.generation, up_best.index)
    if "sigma_lr" in kwargs:
        assert up_sigmas[-1] != up_sigmas[0]  # σ did adapt: the comparison covers its steps


@pytest.mark.parametrize(
    "convert",
    [lambda f: f.double(), lambda f: f.numpy(), lambda f: f.tolist()],
    ids=["float64", "numpy", "list"],
)
def test_a_fitness_as_float64_numpy_or_a_list_steps_as_the_float32_tensor(convert: Callable) -> None:
    """The fitness told as a float64 tensor, a numpy array or a Python list of the same values takes the step of the
    float32 tensor itself, bit for bit (centered ranks see the same order)."""
    ends = []
    for told in (lambda f: f, convert):
        x = flipes.flipout(flipes.nn.Vector(torch.full((4,), 2.0)))
        es = flipes.FlipES(x, popsize=8, sigma=0.1, lr=0.05, seed=0)
        for _ in range(3):
            with es.population():
                fitness = -x().detach().square().sum(1)
            es.tell(told(fitness))
        ends.append(x.value.detach().clone())
    assert torch.equal(*ends) and not torch.equal(ends[0], torch.full((4,), 2.0))
