"""ClipUp: the hand-computed update, the speed limit, and use as a FlipES optimizer."""

from __future__ import annotations

import functools
import io

import pytest
import torch
from helpers import MADE_UP_FITNESS
from torch import nn

import flipes
from flipes.optim import ClipUp


def test_clipup_matches_a_hand_computed_update() -> None:
    """Three ClipUp steps over two parameters taken as one vector: v ← m v + lr g/‖g‖, the step clipped to max_speed
    when ‖v‖ exceeds it (the third); the parameters equal the hand-computed values within assert_close's float32
    defaults."""
    a = nn.Parameter(torch.tensor([1.0, 2.0]))
    b = nn.Parameter(torch.tensor([[3.0]]))
    opt = ClipUp([a, b], lr=0.1, momentum=0.5, max_speed=0.15)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])  # ‖g‖ = 5
    opt.step()
    # v = 0.1 · g/5 = (0.06, 0, 0.08), ‖v‖ = 0.1 ≤ 0.15: θ -= v
    torch.testing.assert_close(a.detach(), torch.tensor([0.94, 2.0]))
    torch.testing.assert_close(b.detach(), torch.tensor([[2.92]]))
    a.grad, b.grad = torch.tensor([0.0, 1.0]), torch.tensor([[0.0]])  # ‖g‖ = 1
    opt.step()
    # v = 0.5 · (0.06, 0, 0.08) + 0.1 · (0, 1, 0) = (0.03, 0.1, 0.04); ‖v‖ = 0.1122 ≤ 0.15
    torch.testing.assert_close(a.detach(), torch.tensor([0.91, 1.9]))
    torch.testing.assert_close(b.detach(), torch.tensor([[2.88]]))
    a.grad, b.grad = torch.tensor([0.0, 1.0]), torch.tensor([[0.0]])
    opt.step()
    # v = 0.5 · (0.03, 0.1, 0.04) + (0, 0.1, 0) = (0.015, 0.15, 0.02); ‖v‖ = 0.15207 > 0.15: clipped to 0.15
    v = torch.tensor([0.015, 0.15, 0.02])
    v = v * 0.15 / v.norm()
    torch.testing.assert_close(a.detach(), torch.tensor([0.91, 1.9]) - v[:2])
    torch.testing.assert_close(b.detach(), torch.tensor([[2.88]]) - v[2])


def test_clipup_never_steps_farther_than_max_speed() -> None:
    """Over 200 steps with gradients of scales 1e-6 to 1e6 and momentum 0.95, every step is at most max_speed long (up
    to 1e-6 relative, float32 rounding); a zero gradient gives a finite step within max_speed as well."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(50))
    opt = ClipUp([p], lr=0.3, momentum=0.95, max_speed=0.4)
    for _ in range(200):
        before = p.detach().clone()
        p.grad = torch.randn(50) * 10 ** torch.empty(()).uniform_(-6, 6)  # any scale
        opt.step()
        assert (p.detach() - before).norm() <= 0.4 * (1 + 1e-6)
    p.grad = torch.zeros(50)  # a zero gradient: the velocity only decays
    before = p.detach().clone()
    opt.step()
    assert torch.isfinite(p).all() and (p.detach() - before).norm() <= 0.4 * (1 + 1e-6)


def test_clipup_follows_a_float64_hand_computed_trajectory_for_float64_parameters() -> None:
    """Float64 parameters take float64 steps: over several steps, of gradients of any scale, a zero one, and
    steps the speed limit clips, the two groups together (one vector, as the paper's) follow v <- m v + lr g/|g|,
    v <- v min(1, max_speed/|v|), theta <- theta - v computed by hand in float64, to float64 rounding."""
    gen = torch.Generator().manual_seed(0)
    groups = [[torch.linspace(-1, 1, 7, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)],
              [torch.linspace(0, 2, 5, dtype=torch.float64)]]  # fmt: skip
    params = [[nn.Parameter(t.clone()) for t in g] for g in groups]
    lr, momentum, max_speed = 0.05, 0.9, 0.08
    opt = ClipUp([{"params": ps} for ps in params], lr=lr, momentum=momentum, max_speed=max_speed)
    theta = [torch.cat([t.flatten() for t in g]) for g in groups]
    v = [torch.zeros_like(t) for t in theta]
    for k in range(12):
        grads = [torch.randn(t.shape, dtype=torch.float64, generator=gen) * 10.0 ** (k % 5 - 2) for t in theta]
        if k == 4:
            grads = [torch.zeros_like(g) for g in grads]  # a zero gradient adds nothing
        for ps, g in zip(params, grads, strict=True):
            for p, gp in zip(ps, g.split([p.numel() for p in ps]), strict=True):
                p.grad = gp.reshape(p.shape).clone()
        norm = torch.cat(grads).norm().item()  # of the whole vector, both groups
        v = [momentum * vi + (lr * g / norm if norm > 0 else 0 * g) for vi, g in zip(v, grads, strict=True)]
        clip = min(1.0, max_speed / torch.cat(v).norm().item())
        v = [vi * clip for vi in v]
        theta = [t - vi for t, vi in zip(theta, v, strict=True)]
        opt.step()
        for ps, t in zip(params, theta, strict=True):
            torch.testing.assert_close(torch.cat([p.detach().flatten() for p in ps]), t, rtol=0, atol=1e-15)
    assert all(opt.state[p]["velocity"].dtype == torch.float64 for ps in params for p in ps)


def test_clipup_resumes_half_precision_parameters_bit_for_bit() -> None:
    """The float32 velocity of bfloat16 parameters survives a state_dict round trip as float32, so an
    interrupted and resumed run equals an uninterrupted one bit for bit."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 16, generator=gen).to(torch.bfloat16) for _ in range(10)]

    def steps(params: list[nn.Parameter], opt: ClipUp, grads: list[torch.Tensor]) -> None:
        for g in grads:
            for p, gp in zip(params, g, strict=True):
                p.grad = gp.clone()
            opt.step()

    a = [nn.Parameter((torch.randn(16, generator=gen) * 0.01).to(torch.bfloat16)) for _ in range(2)]
    opt_a = ClipUp(a, lr=0.01, momentum=0.9)
    steps(a, opt_a, grads[:3])
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    b = [nn.Parameter(p.detach().clone()) for p in a]
    opt_b = ClipUp(b, lr=0.01, momentum=0.9)
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer))
    assert all(opt_b.state[p]["velocity"].dtype == torch.float32 for p in b)
    steps(a, opt_a, grads[3:])
    steps(b, opt_b, grads[3:])
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q) and q.dtype == torch.bfloat16
        assert torch.equal(opt_a.state[p]["velocity"], opt_b.state[q]["velocity"])


def test_clipup_options_are_checked() -> None:
    """lr ≤ 0 or not finite, momentum ≥ 1 and max_speed ≤ 0 each raise a ValueError naming that option and its value,
    and a value that is no number (a string, a bool) a TypeError naming it (not a comparison's TypeError); max_speed
    defaults to 2·lr and momentum to 0.9, as the paper recommends."""
    p = [nn.Parameter(torch.zeros(2))]
    for kw, match in (
        (dict(lr=0.0), r"ClipUp: lr must be > 0, got 0\.0"),
        (dict(lr=0.1, momentum=1.0), r"ClipUp: momentum must be in \[0, 1\), got 1\.0"),
        (dict(lr=0.1, max_speed=0.0), r"ClipUp: max_speed must be > 0, got 0\.0"),
        (dict(lr=0.1, max_speed=-1.0), r"ClipUp: max_speed must be > 0, got -1\.0"),
        (dict(lr=float("inf")), r"ClipUp: lr must be a finite number > 0, got inf"),  # every parameter inf at once
        (dict(lr=float("nan")), r"ClipUp: lr must be a finite number > 0, got nan"),
    ):
        with pytest.raises(ValueError, match=match):
            ClipUp(p, **kw)
    for kw in (dict(lr="0.1"), dict(lr=True), dict(lr=0.1, momentum="0.9"), dict(lr=0.1, max_speed=[1.0])):
        with pytest.raises(
            TypeError, match=rf"^ClipUp: {next(k for k, v in kw.items() if not isinstance(v, float))} must be a number, got "
        ):
            ClipUp(p, **kw)
    defaults = ClipUp(p, lr=0.1).param_groups[0]
    assert defaults["max_speed"] == pytest.approx(0.2) and defaults["momentum"] == 0.9  # the paper's 2·lr and 0.9


def test_flipes_with_clipup_solves_a_linear_regression() -> None:
    """FlipES with ClipUp (64 members, 300 generations) fits a 3×5 linear teacher without a bias to a relative error
    (Frobenius norm) below 0.1."""
    torch.manual_seed(0)
    teacher = torch.randn(3, 5)
    model = flipes.flipout(nn.Linear(5, 3, bias=False))
    es = flipes.FlipES(model, popsize=64, sigma=0.05, optimizer=lambda p: ClipUp(p, lr=0.05, max_speed=0.1))
    x = torch.randn(64, 20, 5)
    for _ in range(300):
        with es.population() as pop:
            loss = ((model(x[: pop.size]) - x[: pop.size] @ teacher.T) ** 2).mean((1, 2))
        es.tell(-loss)
    assert (model.weight - teacher).norm() < 0.1 * teacher.norm()


@MADE_UP_FITNESS
@pytest.mark.parametrize("top", [None, 3])
@pytest.mark.parametrize("groups,rank", [(1, None), (2, None), (2, 1)])
def test_ars_weights_give_the_papers_update(top: int | None, groups: int, rank: int | None) -> None:
    """θ += α/(b σ_R) Σ_top-b (r+ - r-) δ_k (Mania et al., 2018), computed directly from the materialized
    directions, equals a FlipES step with ars shaping and SGD at lr = α·ν; also with rank-1 noise, whose directions
    (ε = A B per group, the bias noise shared by a group and sign-flipped per member) are still exact mirrored pairs."""
    from reference import member_perturbations

    torch.manual_seed(0)
    n, nu, alpha = 16, 0.03, 0.02
    policy = flipes.flipout(nn.Linear(4, 2, dtype=torch.float64))  # ARS's linear policy
    es = flipes.FlipES(
        policy, popsize=n, sigma=nu, groups=groups, mirrored=True, noise_rank=rank,
        shaping=lambda f: flipes.shaping.ars(f, top=top), optimizer=lambda p: torch.optim.SGD(p, lr=alpha * nu),
    )  # fmt: skip
    with es.population():
        deltas = member_perturbations(es, policy)  # ν δ_n per parameter
    returns = torch.randn(n, dtype=torch.float64)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    es.tell(returns)
    assert_ars_step(policy, before, deltas, returns, alpha, nu, top)


def assert_ars_step(
    policy: nn.Module,
    before: dict[str, torch.Tensor],
    deltas: dict[str, torch.Tensor],
    returns: torch.Tensor,
    alpha: float,
    nu: float,
    top: int | None,
) -> None:
    """``policy``'s parameters are ``before`` plus ARS's step α/(b σ_R) Σ_top-b (r+ - r-) δ_k, computed from the
    materialized perturbations ``deltas`` (ν δ_n per parameter) to float64 rounding."""
    n = len(returns)
    r_plus, r_minus = returns[0::2].tolist(), returns[1::2].tolist()
    b = n // 2 if top is None else top
    order = sorted(range(n // 2), key=lambda k: -max(r_plus[k], r_minus[k]))[:b]
    used = [r_plus[k] for k in order] + [r_minus[k] for k in order]
    mean = sum(used) / len(used)
    sigma_r = (sum((r - mean) ** 2 for r in used) / len(used)) ** 0.5
    for name, p in policy.named_parameters():
        delta = deltas[name] / nu  # δ_n; member 2k+1 is -δ_2k
        assert torch.equal(delta[1::2], -delta[0::2])
        step = sum((r_plus[k] - r_minus[k]) * delta[2 * k] for k in order) * alpha / (b * sigma_r)
        torch.testing.assert_close(p.detach(), before[name] + step, atol=1e-12, rtol=1e-10)


@MADE_UP_FITNESS
def test_the_ars_search_rule_takes_the_papers_step() -> None:
    """``--algo ars`` (its shaping and optimizer as ``flipes.train`` builds them) at --lr α = 0.02, --sigma ν = 0.05
    and --ars-top 3 moves a linear policy by ARS's α/(b σ_R) Σ_top-b (r+ - r-) δ_k (Mania et al., 2018), computed from
    the materialized directions, to float64 rounding: a step in units of the directions δ, not of the perturbations νδ."""
    from reference import member_perturbations

    from flipes.builders import build_es
    from flipes.commands import parse_train_config

    torch.manual_seed(0)
    alpha, nu = 0.02, 0.05
    config = parse_train_config(["--algo", "ars", "--lr", str(alpha), "--sigma", str(nu), "--ars-top", "3", "--popsize", "16"])
    policy = flipes.flipout(nn.Linear(4, 2, dtype=torch.float64))
    es = build_es(config, policy, flipes.dist.SerialComm())
    with es.population():
        deltas = member_perturbations(es, policy)
    returns = torch.randn(16, dtype=torch.float64)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    es.tell(returns)
    assert_ars_step(policy, before, deltas, returns, alpha, nu, 3)


def test_ars_shaping_needs_mirrored_pairs() -> None:
    """ARS shaping of an odd number of fitness values raises a ValueError saying so, ``top`` beyond the number of
    pairs one naming the range 1 ... 3; equal fitness values shape to zeros (no step); FlipES refuses it (also as
    a functools.partial) with mirrored=False, whose pairs are unrelated members."""
    with pytest.raises(ValueError, match="odd"):
        flipes.shaping.ars(torch.randn(5))
    with pytest.raises(ValueError, match=r"top must be 1 \.\.\. 3"):
        flipes.shaping.ars(torch.randn(6), top=4)
    assert torch.equal(flipes.shaping.ars(torch.ones(6)), torch.zeros(6))  # no spread, no step
    model = flipes.flipout(nn.Linear(3, 2))
    for shaping in (flipes.shaping.ars, functools.partial(flipes.shaping.ars, top=2)):
        with pytest.raises(ValueError, match=r"mirrored pairs .* use mirrored=True"):
            flipes.FlipES(model, popsize=8, mirrored=False, shaping=shaping)
        flipes.FlipES(model, popsize=8, shaping=shaping)  # mirrored, the default


def test_ars_keeps_the_directions_whose_better_return_is_highest() -> None:
    """ARS ranks direction k by max(r+, r-) (Mania et al., 2018, V1-t): with returns (r+, r-) = (1, 5), (2, 0), (3, 2.5)
    and top 2 it keeps directions 0 and 2 (best 5 and 3), though direction 1 has the higher r+ than direction 0;
    σ_R is the population std of the 4 returns kept, and the weights are ±N (r+ - r-) / (2 b σ_R), hand-computed."""
    f = torch.tensor([1.0, 5.0, 2.0, 0.0, 3.0, 2.5], dtype=torch.float64)
    # kept returns 1, 5, 3, 2.5: mean 2.875, squared deviations 3.515625 + 4.515625 + 0.015625 + 0.140625 = 8.1875
    sigma_r = (8.1875 / 4) ** 0.5
    w0, w2 = 6 * (1 - 5) / (2 * 2 * sigma_r), 6 * (3 - 2.5) / (2 * 2 * sigma_r)
    expect = torch.tensor([w0, -w0, 0.0, 0.0, w2, -w2], dtype=torch.float64)
    torch.testing.assert_close(flipes.shaping.ars(f, top=2), expect, atol=1e-15, rtol=1e-14)


def test_an_optimizer_whose_lr_is_none_builds_prints_and_steps() -> None:
    """Hugging Face's Adafactor with ``lr=None`` (its relative step) is a FlipES optimizer: the build's lr check, its
    ``repr`` and ``tell`` take it (the parameters move), and ``es.lr`` says it has none, as for an optimizer without an
    lr."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = flipes.flipout(nn.Linear(4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    adafactor = transformers.optimization.Adafactor
    es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=0, optimizer=lambda p: adafactor(p, lr=None, relative_step=True))
    assert "optimizer=Adafactor," in repr(es)
    with es.population() as pop:
        fitness = model(torch.randn(pop.size, 4)).sum(1)
    es.tell(fitness)
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    with pytest.raises(AttributeError, match="has no lr in its param_groups"):
        _ = es.lr
