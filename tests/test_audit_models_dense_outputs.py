"""A module run per member with dense noise whose output holds leaves that are no tensors (``None``, a number), as
``MultiheadAttention(need_weights=False)`` returns ``(out, None)``: the tensors are each member's, the other leaves come
back as the forward returned them, and every member equals its plain copy."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_members_are_their_plain_copies
from torch import Tensor, nn
from torch.nn.utils import parametrizations

import flipes

DT = torch.float64
N = 8


class Scored(nn.Module):
    """A gain returning ``(y, None, 3)``: a tensor beside leaves that are no tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 5))

    def forward(self, h: Tensor) -> tuple[Tensor, None, int]:
        return h * self.gain, None, 3


class ScoredMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.scored, self.out = nn.Linear(4, 5), Scored(), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, nothing, three = self.scored(self.fc(x))
        assert nothing is None and three == 3
        return self.out(h)


def attention_encoder() -> nn.Module:
    """A transformer layer (its attention called with ``need_weights=False``) whose ``out_proj`` is weight-normed: the
    attention runs per member with dense noise."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    parametrizations.weight_norm(layer.self_attn.out_proj)
    return layer


@pytest.mark.parametrize("make", [ScoredMLP, attention_encoder])
def test_a_dense_modules_output_with_none_in_it_is_each_members_own(make: type[nn.Module]) -> None:
    """Every member's output equals a plain copy of the model with its state dict (float64, 1e-12), where vmap refused
    the ``None`` before."""
    torch.manual_seed(0)
    plain = make().to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, 3, 4 if isinstance(plain, ScoredMLP) else 8, dtype=DT)
    assert_members_are_their_plain_copies(plain, model, es, x, one_row=True)
