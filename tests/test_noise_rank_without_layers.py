"""``noise_rank`` shapes the noise of Flipout layers alone: on a model without one (a black-box ``Vector``), where it
changes nothing, a warning says so rather than the option being ignored in silence."""

from __future__ import annotations

import warnings

import pytest
import torch

import flipes
from flipes.nn import Vector


def test_noise_rank_on_a_model_without_flipout_layers_warns() -> None:
    """A Vector alone with noise_rank=2 warns naming the option, at the caller's line; with 0 (full rank), nothing."""
    with pytest.warns(UserWarning, match=r"noise_rank=2 makes a Flipout layer's noise low-rank, .* drop noise_rank") as w:
        flipes.FlipES(flipes.flipout(Vector(torch.zeros(5))), popsize=8, noise_rank=2)
    assert w[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flipes.FlipES(flipes.flipout(Vector(torch.zeros(5))), popsize=8, noise_rank=0)


def test_noise_rank_on_a_model_with_a_flipout_layer_builds() -> None:
    """A Flipout layer beside a Vector takes noise_rank as before, without a warning."""
    model = flipes.flipout(torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "v": Vector(torch.zeros(2))}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert flipes.FlipES(model, popsize=8, noise_rank=1).noise_rank == 1
