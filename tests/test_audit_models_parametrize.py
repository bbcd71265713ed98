"""A parametrization with trainable parameters of its own (LoRA written with ``torch.nn.utils.parametrize``: ``W + B A``
over a frozen ``W``): the parametrized layer runs per member with each member's ``A`` and ``B``, so every member equals a
plain copy of the model with its state dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.parametrize as P
from helpers import assert_members_are_their_plain_copies
from torch import Tensor, nn

import flipes

DT = torch.float64
N = 8


class LoRA(nn.Module):
    """``W + B A``, rank 2: the adapter a researcher evolves over a frozen pretrained weight."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(2, in_features) * 0.1)
        self.B = nn.Parameter(torch.randn(out_features, 2) * 0.1)

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.B @ self.A


def adapted_mlp(freeze_base: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2)).to(DT)
    for layer in (model[0], model[3]):
        P.register_parametrization(layer, "weight", LoRA(layer.out_features, layer.in_features).to(DT))
        if freeze_base:
            layer.parametrizations.weight.original.requires_grad_(False)
            layer.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("freeze_base", [True, False])
def test_a_lora_parametrization_evolves_its_own_parameters_each_member_as_its_plain_copy(freeze_base: bool) -> None:
    """Over a frozen base (A and B the only trainable parameters of the layers) and over a trainable one: flipout
    evolves A and B (dense noise on the parametrized layer), and each member's output equals a plain copy of the model
    with that member's state dict, float64 to 1e-12."""
    plain = adapted_mlp(freeze_base)
    model = flipes.flipout(copy.deepcopy(plain))
    rows = {row.name: row.how for row in flipes.nn.parameter_report(model).rows}
    assert rows["0.parametrizations.weight.0.A"] == rows["3.parametrizations.weight.0.B"] == "dense"
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, 3, 5, dtype=DT)
    assert_members_are_their_plain_copies(plain, model, es, x)


class AdaptedAttention(nn.Module):
    """Self-attention whose packed ``in_proj_weight`` carries a LoRA parametrization, every parameter trainable, under a
    Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        P.register_parametrization(self.attn, "in_proj_weight", LoRA(24, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_a_parametrized_attention_layer_runs_per_member_as_a_whole_each_member_as_its_plain_copy() -> None:
    """A MultiheadAttention made a parametrized class of its own reads its ``out_proj`` weight itself, so that child
    stays a plain layer (a Flipout ``out_proj`` would leave ``in_proj_bias`` with no per-member form, an error): the
    attention runs per member as a whole, all its parameters dense, and each member equals its plain copy (float64,
    1e-12)."""
    torch.manual_seed(0)
    plain = AdaptedAttention().to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    rows = {row.name: row.how for row in flipes.nn.parameter_report(model).rows}
    assert rows["attn.out_proj.weight"] == rows["attn.in_proj_bias"] == rows["attn.parametrizations.in_proj_weight.0.A"]
    assert rows["attn.out_proj.weight"] == "dense" and rows["head.weight"] == "flipout"
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, 4, 8, dtype=DT)
    assert_members_are_their_plain_copies(plain, model, es, x, one_row=True)


def test_a_parametrized_attention_layer_given_alone_keeps_its_out_proj_plain() -> None:
    """``flipout`` of the parametrized attention layer itself, not inside a model: its ``out_proj`` is no Flipout layer
    either, and every parameter is evolved (dense)."""
    attn = flipes.flipout(AdaptedAttention().attn)
    assert not isinstance(attn.out_proj, flipes.nn.FlipoutMixin)
    assert {row.how for row in flipes.nn.parameter_report(attn).rows} == {"dense"}
