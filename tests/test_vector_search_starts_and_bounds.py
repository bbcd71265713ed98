"""Black-box search over ``flipes.nn.Vector``: starts that cannot be searched are refused in one line, the step of any
popsize and objective sense is the ES estimate written out by hand, and the README's recipe for box bounds and
infeasible members keeps the centre in the box."""

from __future__ import annotations

import pytest
import torch

import flipes

DT = torch.float64


@pytest.mark.parametrize(
    ("init", "dtype", "match"),
    [
        (torch.tensor([float("nan"), 1.0]), None, r"1 of the 2 starting values are not finite in torch.float32"),
        (torch.tensor([1.0, -float("inf"), float("inf")], dtype=DT), None, r"2 of the 3 starting values are not finite"),
        ([1e300, 1.0], torch.float32, r"1 of the 2 starting values are not finite in torch.float32"),  # overflows float32
        (torch.ones(0), None, r"shape \(0,\) has no entries to evolve"),
        ((2, 0), None, r"shape \(2, 0\) has no entries to evolve"),
    ],
)
def test_a_start_with_no_entries_or_a_non_finite_one_is_refused_in_one_line(init: object, dtype: object, match: str) -> None:
    """A NaN or infinite start (also one that overflows the dtype it is converted to) and an empty one are refused
    when the Vector is built, rather than every member's fitness turning NaN (blamed on an overflowed update) or a
    search stepping nothing."""
    with pytest.raises(ValueError, match=match) as caught:
        flipes.nn.Vector(init, dtype=dtype)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("popsize", "mirrored", "maximize"), [(7, False, True), (7, False, False), (8, True, True)])
def test_a_vectors_step_is_the_es_estimate_by_hand_for_any_popsize_and_sense(
    popsize: int, mirrored: bool, maximize: bool
) -> None:
    """With raw shaping and SGD the step is ``lr · Σ_n F_n u_n / (Nσ)`` on each member's noise, F the fitness when
    maximizing and minus the loss when minimizing, for an odd popsize without mirroring too, to rounding."""
    d, sigma, lr = 5, 0.3, 0.1
    x = flipes.flipout(flipes.nn.Vector(torch.linspace(-1, 2, d, dtype=DT)))
    es = flipes.FlipES(
        x, popsize=popsize, sigma=sigma, seed=1, mirrored=mirrored, maximize=maximize, shaping=flipes.shaping.raw,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr),
    )  # fmt: skip
    theta = x.value.detach().clone()
    with es.population():
        members = x()
    u = torch.stack([es.member_noise(i)["value"] for i in range(popsize)]) / sigma
    torch.testing.assert_close(members, theta + sigma * u, atol=1e-15, rtol=0)
    f = members.square().sum(1) + members[:, 0]
    es.tell(f)
    signed = f if maximize else -f
    torch.testing.assert_close(x.value.detach(), theta + lr * (signed @ u) / (popsize * sigma), atol=1e-14, rtol=0)


def test_the_readme_box_recipe_keeps_the_centre_inside_and_reaches_the_optimum_on_the_bound() -> None:
    """Members evaluated at ``x().clamp(lo, hi)``, infeasible ones given a finite worst loss, and the centre clamped
    after each tell: a sphere whose unconstrained optimum 0 lies outside the box [1, 2]^5 ends at the corner 1."""
    lo, hi = 1.0, 2.0
    x = flipes.flipout(flipes.nn.Vector(torch.full((5,), 1.5)))
    es = flipes.FlipES(x, popsize=32, sigma=0.1, lr=0.05, seed=0, maximize=False)
    for generation in range(150):
        with es.population():
            xs = x()
            loss = xs.clamp(lo, hi).square().sum(1)
            loss[::5] = float("nan") if generation % 2 else float("inf")  # an infeasible member or several
            loss = loss.nan_to_num(nan=1e9, posinf=1e9)
        es.tell(loss)
        with torch.no_grad():
            x.value.clamp_(lo, hi)
        assert bool(((x.value >= lo) & (x.value <= hi)).all())
    torch.testing.assert_close(x.value.detach(), torch.full((5,), lo), atol=0.02, rtol=0)


def test_pgpes_clipup_derives_its_speed_from_model_parameters_as_from_a_list() -> None:
    """``flipes.search.clipup(params, max_speed=0, lr)`` is ClipUp at ``lr·√D/2`` over D parameters whether ``params``
    is a list, ``model.parameters()`` (a generator: counting D must not use it up) or param groups."""
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(100)))
    for params in (list(x.parameters()), x.parameters(), [{"params": x.parameters()}], [{"params": x.value}]):
        optimizer = flipes.search.clipup(params, max_speed=0, lr=0.01)
        group = optimizer.param_groups[0]
        assert group["params"] == [x.value]
        assert (group["max_speed"], group["lr"]) == pytest.approx((0.05, 0.025))


class Coordinates(torch.nn.Module):
    """One Vector per coordinate: each a dense parameter, so each gets its own σ under ``sigma_lr``."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.coordinates = torch.nn.ModuleList(flipes.nn.Vector(v) for v in x0)

    def forward(self) -> torch.Tensor:
        return torch.stack([v() for v in self.coordinates], -1)


def test_one_vector_per_coordinate_adapts_a_sigma_per_coordinate() -> None:
    """The README's per-coordinate σ (as SNES adapts): on the ellipsoid ``x0² + 10⁴·x1²`` the stiff coordinate's σ
    ends more than 10× below the other's (55× with this seed), and the centre nears the optimum."""
    x = flipes.flipout(Coordinates(torch.tensor([3.0, 3.0])))
    es = flipes.FlipES(x, popsize=32, sigma=0.5, lr=0.05, seed=0, maximize=False, sigma_lr=0.2)
    for _ in range(300):
        with es.population():
            members = x()
            loss = members[:, 0] ** 2 + 1e4 * members[:, 1] ** 2
        es.tell(loss)
    loose, stiff = es.sigmas()
    assert loose > 10 * stiff
    centre = x().detach()
    assert float(centre[0] ** 2 + 1e4 * centre[1] ** 2) < 0.5  # from 90,009
