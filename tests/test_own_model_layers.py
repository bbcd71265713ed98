"""A researcher's own torch models with layer kinds and settings no other test file combines: each converts with
``flipes.flipout`` and each member computes what a plain copy of the model with that member's parameters
(``es.member_state_dict``) computes, or is refused with an error naming the layer and the fix."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_members_are_their_plain_copies
from torch import nn
from torch.nn.utils import parametrizations

import flipes

DT = torch.float64
N = 4


def members_and_plain(make: nn.Module, **es_options: object) -> tuple[nn.Module, nn.Module, flipes.FlipES]:
    """A plain copy of ``make()``, its conversion and a FlipES of N members over the conversion (float64)."""
    torch.manual_seed(0)
    plain = make().to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    return plain, model, flipes.FlipES(model, popsize=N, sigma=0.1, seed=1, **es_options)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: parametrizations.weight_norm(nn.ConvTranspose1d(2, 3, 3, stride=2)), (2, 3)),
        (lambda: parametrizations.orthogonal(nn.ConvTranspose2d(3, 3, 2, bias=False)), (3, 3, 3)),
    ],
    ids=["weight_norm-convtranspose1d", "orthogonal-convtranspose2d"],
)
def test_a_transposed_conv_with_a_parametrized_kernel_runs_each_member_as_its_plain_copy(
    make: type[nn.Module], shape: tuple[int, ...]
) -> None:
    """A ConvTranspose whose kernel is a torch.nn.utils.parametrizations weight (weight_norm, orthogonal) converts (its
    computed ``weight`` is no parameter another module could share) and runs per member as a whole: each member's output
    equals its plain copy's to 1e-12, and every trainable parameter of each member differs from the mean."""
    plain, model, es = members_and_plain(lambda: nn.Sequential(make(), nn.Tanh()))
    assert_members_are_their_plain_copies(plain, model, es, torch.randn(N, *shape, dtype=DT), one_row=True)
    member, mean = es.member_state_dict(0), plain.state_dict()
    assert all(not torch.equal(member[name], mean[name]) for name, p in plain.named_parameters())
