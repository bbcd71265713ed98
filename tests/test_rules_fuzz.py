"""Random search-rule settings against a member-by-member reference of the whole update, where hand-picked cases cannot
reach every combination a user may put together.

Each seed draws FlipES settings (popsize 1 to 12, groups, mirrored, noise_rank, shaping: centered ranks, z-score, raw
or ARS with its top b, fitness with ties, adaptive σ, weight decay, maximize) for a model with a Flipout linear and
conv layer, a dense LayerNorm and a ``Vector``. Over two generations, a reference written here from the paper's
formulas alone (shaping by counting, the leave-out baselines member by member, the perturbations materialized by
tests/reference.py) keeps its own σ per slot and parameters, stepped by SGD; the model's parameters and log σ must
match it after each ``tell``.

Deterministic (fixed seeds, float64): no false alarms; 1e-11 is rounding. A failing seed reproduces alone:
``pytest tests/test_rules_fuzz.py -k 'seed-17]'``.
"""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch
from helpers import MADE_UP_FITNESS
from reference import member_perturbations
from torch import Tensor, nn

import flipes
from flipes.es.shaping import ars, centered_ranks, raw, z_score

DT = torch.float64
SIGMA, LR = 0.2, 0.05


def ranks(f: list[float]) -> list[float]:
    """Centered ranks by counting: a value's rank is the number below it plus half its other ties."""
    n = len(f)
    if n == 1:
        return [0.0]
    return [(sum(y < x for y in f) + (sum(y == x for y in f) - 1) / 2) / (n - 1) - 0.5 for x in f]


def z_scores(f: list[float]) -> list[float]:
    """(f - mean) / population std; zeros when all values are equal."""
    mean = sum(f) / len(f)
    std = math.sqrt(sum((x - mean) ** 2 for x in f) / len(f))
    return [(x - mean) / std if max(f) > min(f) else 0.0 for x in f]


def ars_weights(f: list[float], top: int | None) -> list[float]:
    """Mania et al. (2018): the top b pairs by max(r+, r-) weigh ±N (r+ - r-) / (2 b σ_R), σ_R the std of their returns."""
    n, pairs = len(f), len(f) // 2
    b = pairs if top is None else top
    kept = sorted(range(pairs), key=lambda k: -max(f[2 * k], f[2 * k + 1]))[:b]
    used = [f[2 * k + j] for k in kept for j in (0, 1)]
    mean = sum(used) / len(used)
    sigma_r = math.sqrt(sum((x - mean) ** 2 for x in used) / len(used))
    w = [0.0] * n
    for k in kept:
        if sigma_r > 0:
            w[2 * k], w[2 * k + 1] = (
                n * (f[2 * k] - f[2 * k + 1]) / (2 * b * sigma_r),
                -n * (f[2 * k] - f[2 * k + 1]) / (2 * b * sigma_r),
            )
    return w


class Net(nn.Module):
    """A Flipout linear and 1x1 conv layer (with biases), a LayerNorm and a Vector (dense noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm, self.conv = nn.Linear(3, 4), nn.LayerNorm(4), nn.Conv1d(4, 2, 1)
        self.offset = flipes.nn.Vector(torch.zeros(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(self.fc(x)).unsqueeze(-1)).squeeze(-1) + self.offset()


def draw(seed: int) -> dict:
    """The settings of ``seed``."""
    rng = random.Random(seed)
    mirrored = rng.random() < 0.5
    n = rng.choice([2, 4, 6, 8, 12] if mirrored else [1, 2, 3, 4, 5, 6, 8, 12])
    groups = rng.choice([g for g in range(1, n + 1) if n % g == 0 and (not mirrored or (n // g) % 2 == 0)])
    shaping = rng.choice(["ranks", "z-score", "raw", *(["ars"] if mirrored else [])] if n > 1 else ["raw"])  # 1: refused
    adaptive = shaping != "ars" and rng.random() < 0.5  # refused with ARS and with low-rank noise
    top = rng.choice([None, 1]) if shaping == "ars" else None
    return dict(
        n=n,
        groups=groups,
        mirrored=mirrored,
        shaping=shaping,
        rank=None if adaptive else rng.choice([None, 1, 2]),
        top=top,
        sigma_lr=0.3 if adaptive else 0.0,
        weight_decay=rng.choice([0.0, 0.07]),
        maximize=rng.random() < 0.7,
        ties=rng.random() < 0.3 and top is None,  # ARS's tie for the b-th place goes to torch.topk: not a formula
    )


@MADE_UP_FITNESS
@pytest.mark.filterwarnings("ignore:sigma_lr > 0 with groups=1", "ignore::flipes.EqualFitnessWarning")
@pytest.mark.parametrize("seed", range(100), ids=lambda s: f"seed-{s}")
def test_random_search_settings_follow_the_papers_update(seed: int) -> None:
    """Two generations of ``tell`` equal the reference update to 1e-11 (float64): θ ← θ - lr (-Σ_n F̂_n σ_i u_n /
    (N σ_i²) + λθ), F̂ the shaping of the fitness (negated with maximize=False), and log σ_i += η Σ_n c_n (‖z_n‖² -
    d_part) / (√(2d) N) with c_n = F̂_n less the mean over the members outside n's group (Flipout weights) or pair."""
    s = draw(seed)
    n, groups = s["n"], s["groups"]
    shaping = {"ranks": centered_ranks, "z-score": z_score, "raw": raw, "ars": functools.partial(ars, top=s["top"])}
    reference = {"ranks": ranks, "z-score": z_scores, "raw": list, "ars": functools.partial(ars_weights, top=s["top"])}
    torch.manual_seed(seed)
    model = flipes.flipout(Net().to(DT))
    es = flipes.FlipES(
        model, popsize=n, sigma=SIGMA, seed=seed, groups=groups, mirrored=s["mirrored"], shaping=shaping[s["shaping"]],
        noise_rank=s["rank"], sigma_lr=s["sigma_lr"], weight_decay=s["weight_decay"], maximize=s["maximize"],
        optimizer=lambda p: torch.optim.SGD(p, lr=LR),
    )  # fmt: skip
    names = {id(p): name for name, p in model.named_parameters()}
    slots = [[names[id(p)] for p in (pw.weight, pw.bias) if p is not None] for pw in es.slots]
    slots += [[names[id(p)]] for _, _, p in es.dense_slots]
    flipout_weights = {names[id(pw.weight)] for pw in es.slots}
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    log_sigma = [math.log(SIGMA)] * len(slots)
    group = [i // (n // groups) for i in range(n)]
    pair = [i // 2 if s["mirrored"] else i for i in range(n)]
    for generation in range(2):
        with es.population():
            deltas = member_perturbations(es, model)
        fitness = torch.randn(n, dtype=DT, generator=torch.Generator().manual_seed(10 * seed + generation))
        fitness = fitness.round() if s["ties"] else fitness
        f_hat = reference[s["shaping"]]([x if s["maximize"] else -x for x in fitness.tolist()])

        def baseline_free(block: list[int], f_hat: list[float] = f_hat) -> list[float]:
            others = [[f_hat[j] for j in range(n) if block[j] != block[i]] for i in range(n)]
            return [f_hat[i] - (sum(o) / len(o) if o else 0.0) for i, o in enumerate(others)]

        grads = {}
        for i, slot in enumerate(slots):
            sigma, d, score = math.exp(log_sigma[i]), sum(theta[name].numel() for name in slot), 0.0
            for name in slot:
                delta = deltas[name]
                grads[name] = -sum(f_hat[m] * delta[m] for m in range(n)) / (n * sigma**2) + s["weight_decay"] * theta[name]
                c = baseline_free(group if name in flipout_weights else pair)
                score += sum(c[m] * (delta[m].square().sum().item() / sigma**2 - delta[m].numel()) for m in range(n))
            log_sigma[i] += s["sigma_lr"] * score / (math.sqrt(2 * d) * n)
        theta = {name: theta[name] - LR * grads[name] for name in theta}
        es.tell(fitness)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), theta[name], atol=1e-11, rtol=1e-9, msg=f"{name}, generation {generation}")
        if s["sigma_lr"]:
            torch.testing.assert_close(es.log_sigma, torch.tensor(log_sigma, dtype=DT), atol=1e-11, rtol=0)
        else:
            assert es.log_sigma is None
