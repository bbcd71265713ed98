"""A loop of one's own over FlipES, as an ES researcher writes it: one member's noise, what may change between
generations (shaping, weight decay, the optimizer, a σ rule of one's own) and what is fixed (the population's layout),
and a restart with a larger population from the best member (IPOP)."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import nn

import flipes
from flipes.es.settings import FIXED, OPTIONS

DT = torch.float64


def mlp(dtype: torch.dtype = DT) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 3)).to(dtype)


def bowl(model: nn.Module, pop) -> torch.Tensor:
    x = torch.ones(pop.size, 5, dtype=next(model.parameters()).dtype)
    return -model(x).square().sum(-1)


@pytest.mark.parametrize("options", [dict(), dict(groups=4, mirrored=False), dict(groups=2, noise_rank=2)])
def test_member_noise_is_the_perturbation_the_member_runs_with(options: dict) -> None:
    """es.member_noise(n) is exactly member_parameters(n) - θ̄ for every parameter (bit for bit), a mirrored twin's
    noise is its pair's negated, and noise / σ has entrywise std within 0.8 .. 1.2 of N(0, 1)'s at full rank (its sd over
    seeds is 0.046 with one mirrored group, 4.4 sds from the bounds, 0.023 with 4 groups: false alarm < 1e-4; seed 3).
    A rank-2 ε has few independent factors, so one draw's std spreads far more (sd 0.11, 0.70 .. 1.54 over 3,000 seeds;
    [0.8, 1.2] failed 5.7% of them, seed 3 at 1.18): there the bound is [1/3, 3], which still catches σ missing or
    applied twice (std 10 or 0.1); test_lowrank checks the unit variance of low-rank ε over many draws."""
    model = flipes.flipout(mlp())
    es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=3, **options)
    center = {name: p.detach().clone() for name, p in model.named_parameters()}
    with es.population():
        pass
    for n in range(8):
        noise, params = es.member_noise(n), es.member_parameters(n)
        assert set(noise) == set(params) == set(center)
        for name, delta in noise.items():
            assert torch.equal(params[name], center[name] + delta)
    if options.get("mirrored", True):
        for name, delta in es.member_noise(4).items():
            assert torch.equal(es.member_noise(5)[name], -delta)
    u = torch.cat([d.flatten() for n in range(8) for d in es.member_noise(n).values()]) / es.sigma
    low, high = (1 / 3, 3.0) if options.get("noise_rank") else (0.8, 1.2)
    assert low < u.std().item() < high, (options, u.std().item())  # σ·u with u ~ N(0, 1) entrywise


def test_member_noise_leaves_frozen_parameters_out() -> None:
    """A frozen parameter has no entry in member_noise, an evolved one has; after tell, member_noise is a RuntimeError."""
    net = mlp()
    net[0].bias.requires_grad_(False)
    es = flipes.FlipES(flipes.flipout(net), popsize=4, sigma=0.1)
    with es.population():
        pass
    assert "0.bias" not in es.member_noise(1) and "0.weight" in es.member_noise(1)
    with pytest.raises(RuntimeError, match="after tell"):
        es.tell(torch.arange(4.0))
        es.member_noise(0)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_a_plain_copy_with_a_members_state_dict_computes_that_member(dtype: torch.dtype, tolerance: float) -> None:
    """A plain copy loaded with member_state_dict(n) gives member n's population output to 1e-12 in float64 and 1e-5
    in float32 (groups=2)."""
    plain = mlp(dtype)
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=1, groups=2)
    x = torch.randn(8, 5, dtype=dtype)
    with es.population():
        out = model(x)
    for n in range(8):
        plain.load_state_dict(es.member_state_dict(n))
        torch.testing.assert_close(plain(x[n]), out[n], atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(
    ("name", "value"),
    [("popsize", 16), ("groups", 2), ("seed", 1), ("mirrored", False), ("maximize", False), ("noise_rank", 2),
     ("sigma_lr", 0.1), ("track_best", True), ("hold_noise", False)],
)  # fmt: skip
def test_the_populations_layout_is_fixed_and_assigning_it_names_a_new_flipes(name: str, value: object) -> None:
    """Assigning a layout setting is an AttributeError naming FlipES(model, ..., name=...), leaves the value as it was,
    and the FlipES still steps."""
    es = flipes.FlipES(flipes.flipout(mlp()), popsize=8, sigma=0.1)
    before = getattr(es, name)
    with pytest.raises(AttributeError, match=rf"es\.{name} = .*build a new FlipES\(model, \.\.\., {name}=\.\.\.\)"):
        setattr(es, name, value)
    assert getattr(es, name) == before
    es.step(bowl)  # still the FlipES it was


def test_assigning_popsize_names_the_restart_recipe() -> None:
    """The popsize refusal names the IPOP recipe: another seed, and optimizer.load_state_dict to carry the state over."""
    es = flipes.FlipES(flipes.flipout(mlp()), popsize=8, sigma=0.1)
    with pytest.raises(AttributeError, match=r"another seed.*optimizer\.load_state_dict"):
        es.popsize = 16


def test_shaping_and_weight_decay_may_change_between_generations_checked_as_the_constructor_checks_them() -> None:
    """A shaping assigned between generations is used by the next tell (all-zero weights: SGD moves nothing); a
    shaping that is no function and a negative weight_decay are refused as FlipES(...) refuses them; weight_decay is a
    float."""
    model = flipes.flipout(mlp())
    es = flipes.FlipES(model, popsize=8, sigma=0.1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    es.step(bowl)
    es.shaping = lambda f: torch.zeros_like(f)  # weights 0: the next step (SGD, no momentum) moves nothing
    before = [p.detach().clone() for p in es.params]
    es.step(bowl)
    assert all(torch.equal(a, b) for a, b in zip(before, es.params, strict=True))
    with pytest.raises(TypeError, match="shaping must be a function"):
        es.shaping = "z-score"
    with pytest.raises(ValueError, match="weight_decay"):
        es.weight_decay = -1.0
    es.weight_decay = 0.5
    assert es.weight_decay == 0.5 and isinstance(es.weight_decay, float)


def test_ars_shaping_cannot_be_assigned_beside_adaptive_sigma() -> None:
    """es.shaping = ars with sigma_lr > 0 is refused with FlipES(...)'s own error."""
    es = flipes.FlipES(flipes.flipout(mlp()), popsize=8, sigma=0.1, groups=2, sigma_lr=0.1)
    with pytest.raises(ValueError, match=r"sigma_lr > 0 with shaping=flipes\.shaping\.ars"):
        es.shaping = flipes.shaping.ars


def test_an_optimizer_assigned_between_generations_steps_the_next_one() -> None:
    """An SGD (Nesterov) assigned after a step takes the next one: θ - lr·1.9·grad to 1e-14; the state dict records
    its class; an optimizer over part of es.params, or None, is refused and the SGD stays."""
    model = flipes.flipout(mlp())
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    es.step(bowl)
    es.optimizer = torch.optim.SGD(es.params, lr=0.01, momentum=0.9, nesterov=True)
    before = [p.detach().clone() for p in es.params]
    es.step(bowl)
    for p, b in zip(es.params, before, strict=True):  # first SGD step: θ - lr·(1 + momentum)·grad (Nesterov)
        torch.testing.assert_close(p.detach(), b - 0.01 * 1.9 * p.grad, atol=1e-14, rtol=0)
    assert es.state_dict()["optimizer_class"].endswith("SGD")
    with pytest.raises(ValueError, match="leaves out"):
        es.optimizer = torch.optim.SGD(es.params[:1], lr=0.01)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer over es\.params"):
        es.optimizer = None
    assert isinstance(es.optimizer, torch.optim.SGD)


def test_a_sigma_rule_of_ones_own_is_a_schedule_reading_a_value_changed_after_tell() -> None:
    """The 1/5th success rule's shape: σ read by the schedule for the generation being evaluated, changed between tell and
    the next population; each generation's members are perturbed at the σ of that generation."""
    model = flipes.flipout(mlp())
    rule = {"sigma": 0.1}
    es = flipes.FlipES(model, popsize=8, sigma=lambda g: rule["sigma"], seed=0)
    seen = []
    for scale in (1.0, 0.5, 4.0):
        rule["sigma"] = 0.1 * scale
        with es.population() as pop:
            fitness = bowl(model, pop)
        seen.append((es.sigma, torch.cat([d.flatten() for d in es.member_noise(0).values()])))
        assert es.tell(fitness)["sigma"] == pytest.approx(0.1 * scale)
    assert [s for s, _ in seen] == pytest.approx([0.1, 0.05, 0.4])
    with pytest.raises(AttributeError, match=r"sigma=lambda g: rule\.sigma"):
        es.sigma = 0.2


def test_an_ipop_restart_is_a_new_flipes_from_the_best_member_and_its_checkpoint_names_the_popsize() -> None:
    """A FlipES of twice the popsize built on the model loaded with es.best's state starts from the best fitness, owns
    the layers (the old one's population() is an error), evaluates 16 members, and its state dict is refused by a
    FlipES of popsize 8, naming both."""
    x = flipes.flipout(flipes.nn.Vector(torch.full((6,), 3.0, dtype=DT)))

    def rastrigin(v: torch.Tensor) -> torch.Tensor:
        return 10 * v.shape[-1] + (v * v - 10 * torch.cos(2 * math.pi * v)).sum(-1)

    es = flipes.FlipES(x, popsize=8, sigma=1.0, lr=0.05, seed=0, maximize=False, track_best=True)
    for _ in range(5):
        es.step(lambda m, pop: rastrigin(m()))
    best = es.best
    x.load_state_dict(best.state_dict)
    bigger = flipes.FlipES(x, popsize=16, sigma=1.0, lr=0.05, seed=1, maximize=False, track_best=True)
    with torch.no_grad():
        assert rastrigin(x()).item() == pytest.approx(best.fitness)
    with pytest.raises(RuntimeError):  # the newest FlipES owns the layers
        with es.population():
            pass
    with bigger.population() as pop:
        assert pop.size == 16
        fitness = rastrigin(x())
    bigger.tell(fitness)
    state = copy.deepcopy(bigger.state_dict())
    with pytest.raises(ValueError, match="popsize: saved 16, now 8"):
        flipes.FlipES(x, popsize=8, sigma=1.0, seed=1, maximize=False, track_best=True).load_state_dict(state)


def test_a_flipes_deep_copied_or_pickled_keeps_its_fixed_settings_fixed() -> None:
    """A deep copy (through ``__getstate__``/``__setstate__``, as pickle) refuses ``popsize = ...`` and still steps; so
    does one unpickled from a state without the guard's flag, as an older flipes pickled it."""
    es = flipes.FlipES(flipes.flipout(mlp()), popsize=8, sigma=0.1)
    twin = copy.deepcopy(es)
    with pytest.raises(AttributeError, match="fixed"):
        twin.popsize = 4
    twin.step(bowl)
    older = es.__getstate__()
    del older["_built"]  # as an older flipes pickled it, before the guard
    twin = flipes.FlipES.__new__(flipes.FlipES)
    twin.__setstate__(older)
    with pytest.raises(AttributeError, match="fixed"):
        twin.popsize = 4


def test_a_vector_steps_as_a_hand_written_openai_es_on_the_same_noise() -> None:
    """Black-box search over a Vector is OpenAI-ES step for step: mirrored Gaussian members, centered ranks, the
    estimate Σ w_n u_n / (Nσ) and Adam, written out by hand on each member's noise (es.member_noise)."""
    d, n, sigma, lr = 10, 16, 0.5, 0.05
    x = flipes.flipout(flipes.nn.Vector(torch.full((d,), 3.0, dtype=DT)))
    es = flipes.FlipES(x, popsize=n, sigma=sigma, lr=lr, seed=0, maximize=False)
    theta, m, v = x.value.detach().clone(), torch.zeros(d, dtype=DT), torch.zeros(d, dtype=DT)
    for t in range(1, 6):
        with es.population():
            members = x()
        eps = torch.stack([es.member_noise(i)["value"] for i in range(n)]) / sigma
        torch.testing.assert_close(members, theta + sigma * eps, atol=1e-14, rtol=0)
        assert torch.equal(eps[1::2], -eps[0::2])  # mirrored pairs
        loss = (members * members - 10 * torch.cos(2 * math.pi * members)).sum(1)
        ranks = torch.empty(n, dtype=DT)
        ranks[(-loss).argsort()] = torch.arange(n, dtype=DT)
        w = ranks / (n - 1) - 0.5
        g = -(w @ eps) / (n * sigma)  # the gradient of the loss
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        theta = theta - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        es.tell(loss)
        torch.testing.assert_close(x.value.detach(), theta, atol=1e-12, rtol=0)


def test_flipes_shaping_functions_take_arrays_and_lists_so_they_compose_in_a_shaping_of_ones_own() -> None:
    """NSR-ES's fitness, the mean of the reward's and the novelty's centered ranks, from numpy values."""
    import numpy as np

    reward, novelty = np.array([3.0, 1.0, 2.0, 5.0]), [0.1, 0.4, 0.3, 0.2]
    mixed = (flipes.shaping.centered_ranks(reward) + flipes.shaping.centered_ranks(novelty)) / 2
    # ranks 2, 0, 1, 3 and 0, 3, 2, 1 of 0 .. 3, each scaled to [-1/2, 1/2]
    torch.testing.assert_close(mixed, torch.tensor([-1 / 6, 0.0, 0.0, 1 / 6], dtype=DT), atol=1e-15, rtol=0)
    for shaping in (flipes.shaping.z_score, flipes.shaping.raw, flipes.shaping.ars):
        assert torch.equal(shaping(reward), shaping(torch.from_numpy(reward)))
    with pytest.raises(TypeError, match="Tensor, a numpy array or a list of numbers, got NoneType"):
        flipes.shaping.centered_ranks(None)


@pytest.mark.parametrize("name", ["params", "layers", "members", "dense_slots", "model"])
def test_assigning_what_follows_from_the_model_names_no_argument_flipes_lacks(name: str) -> None:
    """The refusal of ``es.<name> = ...`` for what FlipES derives (its parameters, layers, members, ``model``) names a
    FlipES(...) call that exists: no ``params=`` argument, which would be a TypeError. The arguments it names for the
    others are FlipES's own, checked against its signature."""
    es = flipes.FlipES(flipes.flipout(mlp()), popsize=8, sigma=0.1)
    with pytest.raises(AttributeError, match=r"build a new FlipES\((model|other_model), \.\.\.\)") as refused:
        setattr(es, name, None)
    assert f"{name}=" not in str(refused.value)
    arguments = set(inspect.signature(flipes.FlipES).parameters)
    assert OPTIONS == FIXED & arguments - {"model"}  # the model is named apart
