"""Flipout layers against the math of DESIGN.md at the edges: empty example batches, and the ES estimate's mean."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flipes

N = 4


@pytest.mark.parametrize("rank", [None, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("grad", [False, True])
def test_an_empty_batch_of_examples_per_member_gives_an_empty_output(rank: int | None, groups: int, grad: bool) -> None:
    """``(N, 0, in)`` and ``(N, 2, 0, in)`` inputs (no examples per member) give ``(N, 0, out)`` and ``(N, 2, 0, out)``
    as ``nn.Linear`` does for an empty batch, full-rank or low-rank noise, with or without autograd; a cell, attention
    and a converted norm on top of it too (full-rank noise raised a bare reshape error)."""
    lin = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(lin, popsize=N, sigma=0.1, noise_rank=rank, groups=groups)
    with es.population(), torch.set_grad_enabled(grad):
        assert lin(torch.randn(N, 0, 3)).shape == (N, 0, 2)
        assert lin(torch.randn(N, 2, 0, 3)).shape == (N, 2, 0, 2)
    cell = flipes.flipout(nn.LSTMCell(3, 2))
    attn = flipes.flipout(nn.MultiheadAttention(4, 2, batch_first=True))
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    for m in (cell, attn, model):
        es = flipes.FlipES(m, popsize=N, sigma=0.1, noise_rank=rank, groups=groups)
        with es.population(), torch.set_grad_enabled(grad):
            if m is cell:
                assert [t.shape for t in cell(torch.randn(N, 0, 3))] == [(N, 0, 2)] * 2
            elif m is attn:
                x = torch.randn(N, 0, 4)
                assert attn(x, x, x, need_weights=False)[0].shape == (N, 0, 4)
            else:
                assert model(torch.randn(N, 0, 3)).shape == (N, 0, 3)


def test_an_input_of_no_features_is_not_told_to_flatten_its_examples() -> None:
    """``(N, B, 0)`` fed to a layer of 3 features is refused naming the sizes, not with the hint for examples
    flattened into the features (0 is a multiple of every size)."""
    lin = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(lin, popsize=N, sigma=0.1)
    with es.population(), pytest.raises(ValueError, match=r"has 0 features, the layer takes 3; give it") as info:
        lin(torch.randn(N, 2, 0))
    assert "flatten" not in str(info.value)
