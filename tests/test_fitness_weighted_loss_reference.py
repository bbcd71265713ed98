"""A population's per-member cross-entropy with class weights and label smoothing, reduced as the README says, is each
member's loss as a plain model holding ``es.member_state_dict(n)`` computes it with ``F.cross_entropy(..., weight=w)``."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import flipes


def test_weighted_per_member_loss_is_the_plain_models_weighted_loss() -> None:
    """Exact to 1e-12 in float64 for every member, with ``.sum(1) / w[y].sum()`` (``.mean(1)`` is not)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=gen, dtype=torch.float64), torch.randint(3, (40,), generator=gen)
    w = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=6, sigma=0.1, lr=0.01, seed=2)
    batch = 8
    with es.population() as pop:
        idx = pop.minibatch(len(x), batch)
        logits = model(x[idx].expand(pop.size, batch, 5)).flatten(0, 1)
        loss = F.cross_entropy(logits, y[idx].repeat(pop.size), weight=w, label_smoothing=0.1, reduction="none")
        per_member = loss.view(pop.size, batch).sum(1) / w[y[idx]].sum()
    for n in range(pop.size):
        member = copy.deepcopy(plain)
        member.load_state_dict(es.member_state_dict(n))
        expected = F.cross_entropy(member(x[idx]), y[idx], weight=w, label_smoothing=0.1)
        assert abs(per_member[n].item() - expected.item()) < 1e-12
        assert abs(loss.view(pop.size, batch)[n].mean().item() - expected.item()) > 1e-3
