"""A population run inside ``torch.nn.utils.parametrize.cached()`` (the context that computes each parametrized weight
once, around a loop that reuses it): a parametrized layer runs per member on each member's own weight, never the
mean network's weight cached before the population, and leaves no member's weight in the cache."""

from __future__ import annotations

import copy

import torch
import torch.nn.utils.parametrize as P
from torch import nn
from torch.nn.utils import parametrizations

import flipes

DT = torch.float64
N = 4


def _orthogonal_first_layer() -> tuple[nn.Module, nn.Module, flipes.FlipES, torch.Tensor]:
    """A float64 MLP whose first layer is orthogonal-parametrized, its converted copy, a FlipES of N members, inputs."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    parametrizations.orthogonal(plain[0])
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, 3, 5, dtype=DT)
    return plain, model, es, x


def test_each_member_reads_its_own_parametrized_weight_inside_a_parametrization_cache() -> None:
    """With an orthogonal first layer: the mean model called inside ``P.cached()`` before the population caches its
    weight there; each member's output in the population that follows equals its plain copy (loaded with
    ``es.member_state_dict(n)``, run outside the cache), float64 to 1e-12, and the cached weight read after it is the
    mean one again (a member with the mean weight is off by ~σ = 0.1)."""
    plain, model, es, x = _orthogonal_first_layer()
    mean_weight = model[0].weight.detach().clone()
    with P.cached():
        model(x[0])  # the mean network's weight cached
        with es.population():
            out = model(x)
        after = model[0].weight
    assert torch.equal(after, mean_weight)
    for n in range(N):  # before tell: this generation's members
        member = copy.deepcopy(plain)
        member.load_state_dict(es.member_state_dict(n))
        torch.testing.assert_close(out[n], member(x[n]), rtol=0, atol=1e-12)


def test_a_population_first_inside_a_parametrization_cache_leaves_the_mean_weight_to_read_after() -> None:
    """Inside ``P.cached()`` with no mean forward before it: the population leaves no member's weight in the cache, so
    the weight read and the mean model's output after it are the mean network's, as outside the cache."""
    _, model, es, x = _orthogonal_first_layer()
    mean_weight, mean_out = model[0].weight.detach().clone(), model(x[0]).detach()
    with P.cached():
        with es.population():
            model(x)
        after, out = model[0].weight, model(x[0])
    assert torch.equal(after, mean_weight)
    assert torch.equal(out, mean_out)
